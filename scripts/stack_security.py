"""How the demo runs secure, as docs/security.md describes (used by ``scripts/stack.py``): a
database login per process, each a member of the schema's role for it; the broker's service
logins, password and ACL files and a private CA, made by ``gateway.broker_sync init``; and
Mosquitto with no anonymous clients, a plain listener for the services and TLS for devices and
field engineers, both on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql
from stack_processes import PROJECT, StackError

PYTHON = sys.executable
# Each process's login on the private PostgreSQL, and the schema's group role it is a member of.
DATABASE_LOGINS: Final = {
    "fleetgate_migrator": "fleetgate_owner",
    "gateway": "fleetgate_gateway",
    "api": "fleetgate_api",
    "readonly": "fleetgate_readonly",
}
# Broker logins of the services, by role; their secrets are made anew at every start.
SERVICE_LOGINS: Final = {
    "gateway": "fleetgate-gateway",
    "alerts": "fleetgate-alerts",
    "api": "fleetgate-api",
    "engineer": "demo-engineer",
}


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseUrls:
    """The DATABASE_URL of each process."""

    migrator: str
    gateway: str
    api: str
    readonly: str

    @classmethod
    def one_for_all(cls, url: str) -> DatabaseUrls:
        return cls(url, url, url, url)


def make_database_logins(superuser_url: str) -> None:
    """Each process's login on the private PostgreSQL, and the group roles they belong to (the
    migration makes those only where it may create roles: here the superuser makes them, as
    docs/security.md asks of an administrator). The migrator owns the database, so that it may
    let the schema's owner create in it."""
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        existing = {name for (name,) in conn.execute("SELECT rolname FROM pg_roles")}
        for login, group in DATABASE_LOGINS.items():
            for role, can_login in ((group, False), (login, True)):
                if role not in existing:
                    options = sql.SQL("LOGIN" if can_login else "NOLOGIN")
                    conn.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role), options))
                    existing.add(role)
            grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login))
            conn.execute(grant)
        conn.execute("ALTER DATABASE fleetgate OWNER TO fleetgate_migrator")


def migrate(env: dict[str, str], database_url: str) -> str:
    """``python -m gateway migrate`` as ``database_url``'s login: what it printed."""
    done = subprocess.run(
        [PYTHON, "-m", "gateway", "migrate"],
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT,
    )
    if done.returncode:
        raise StackError(
            f"migrating the database failed:\n{done.stdout}{done.stderr}(a state folder from "
            "an older demo, whose tables the superuser owns? delete it to start afresh)"
        )
    return done.stdout.strip()


@dataclasses.dataclass(frozen=True, slots=True)
class PrivateBroker:
    """The private Mosquitto's ports, files and the services' logins for this run."""

    root: Path
    port: int  # plain MQTT, for the services
    tls_port: int  # MQTT over TLS, for devices and field engineers
    secrets: dict[str, str] = dataclasses.field(
        default_factory=lambda: {role: secrets.token_urlsafe(24) for role in SERVICE_LOGINS}
    )

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def password_file(self) -> Path:
        return self.root / "logins" / "fleetgate.passwd"

    @property
    def acl_file(self) -> Path:
        return self.root / "logins" / "fleetgate.acl"

    @property
    def pid_file(self) -> Path:
        return self.root / "mosquitto.pid"

    def service_url(self, role: str) -> str:
        """The MQTT_URL of a service: its login, on the plain listener."""
        return f"mqtt://{SERVICE_LOGINS[role]}:{self.secrets[role]}@127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def sync_env(self, database_url: str) -> dict[str, str]:
        """What ``gateway.broker_sync`` reads (init and run)."""
        return {
            "DATABASE_URL": database_url,
            "MOSQUITTO_PASSWORD_FILE": str(self.password_file),
            "MOSQUITTO_ACL_FILE": str(self.acl_file),
            "MOSQUITTO_PID_FILE": str(self.pid_file),
            "MOSQUITTO_CERTS_DIR": str(self.certs),
            "MOSQUITTO_CERT_NAMES": "localhost,127.0.0.1",
        }

    def init(self, env: dict[str, str], database_url: str) -> None:
        """Service logins, both files and a new private CA, before the broker starts."""
        shutil.rmtree(self.certs, ignore_errors=True)  # a new CA each run: none expires
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        variables = {f"DEMO_{role.upper()}_MQTT_SECRET": role for role in SERVICE_LOGINS}
        service_logins = " ".join(
            f"{SERVICE_LOGINS[role]}:{role}:{variable}" for variable, role in variables.items()
        )
        done = subprocess.run(
            [PYTHON, "-m", "gateway.broker_sync", "init"],
            env={
                **env,
                **self.sync_env(database_url),
                "SERVICE_LOGINS": service_logins,
                **{variable: self.secrets[role] for variable, role in variables.items()},
            },
            capture_output=True,
            text=True,
            check=False,
            cwd=PROJECT,
        )
        if done.returncode:
            raise StackError(f"broker_sync init failed:\n{done.stdout}{done.stderr}")

    def config(self) -> Path:
        """The broker's configuration: the project's security.conf (its paths in the state
        folder) and fleetgate.conf, behind the two listeners."""
        security = (PROJECT / "mosquitto" / "security.conf").read_text()
        security = security.replace("/mosquitto/logins/", f"{self.password_file.parent}/")
        security = security.replace("/mosquitto/data/mosquitto.pid", str(self.pid_file))
        if " /mosquitto/" in security:
            raise StackError("mosquitto/security.conf names a path the demo does not place")
        settings = (PROJECT / "mosquitto" / "fleetgate.conf").read_text()
        config = self.root / "mosquitto.conf"
        config.write_text(
            "# Written by scripts/stack.py at every start; edit mosquitto/ instead.\n"
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"listener {self.tls_port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"cafile {self.ca_file}\ncertfile {self.certs / 'server.crt'}\n"
            f"keyfile {self.certs / 'server.key'}\ntls_version tlsv1.2\n"
            f"persistence_location {self.root}/\n"
            f"log_dest file {self.root}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{security}\n{settings}\n"
        )
        return config
