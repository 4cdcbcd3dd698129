"""How the demo runs secure, as docs/security.md describes (used by ``scripts/stack.py``): a
database login per process, each a member of the schema's role for it; the broker's service
logins, password and ACL files and a private CA, made by ``gateway.broker_sync init``; and
a secure private Mosquitto (``fleetgate_tools.private_services``): no anonymous clients, a plain
listener for the services and TLS for devices and field engineers, both on 127.0.0.1 only."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql
from stack_processes import PROJECT, StackError

from fleetgate_tools.private_services import PrivateMosquitto

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
# What the demo's broker logs: errors, warnings and notices (each client's login), not the
# information lines.
_LOG_TYPES: Final = "log_type error\nlog_type warning\nlog_type notice\n"


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


class DemoBroker(PrivateMosquitto):
    """The demo's broker: secure, in the state folder, and the services' logins on it, whose
    secrets are new at every start."""

    def __init__(self, root: Path, port: int, tls_port: int) -> None:
        super().__init__(root, port, tls_port, secure=True, extra_config=_LOG_TYPES)
        self.secrets = {role: secrets.token_urlsafe(24) for role in SERVICE_LOGINS}

    def service_url(self, role: str) -> str:
        """The MQTT_URL of a service: its login, on the plain listener."""
        return f"mqtt://{SERVICE_LOGINS[role]}:{self.secrets[role]}@127.0.0.1:{self.port}"

    def make_logins(self, env: dict[str, str], database_url: str) -> None:
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
                **self.sync_env(),
                "DATABASE_URL": database_url,
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
