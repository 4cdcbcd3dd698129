"""Private PostgreSQL and Mosquitto servers for the tests, the benchmarks and the demo, a
streaming standby of such a PostgreSQL, and a RabbitMQ node for the tests of docs/rabbitmq.md:
each in a folder of its own (a temporary one, removed at close, unless given), on free ports
unless given, listening on 127.0.0.1 only. Nothing here touches a shared server. Run from a
checkout: the broker's settings are the project's own (``mosquitto/``)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final, Self

import psycopg

from gateway.certificates import make_private_ca

PROJECT: Final = Path(__file__).resolve().parents[2]
START_TIMEOUT_S: Final = 60.0
# Its settings, rewritten at every start (the port may change), included by postgresql.conf.
_PG_SETTINGS: Final = "fleetgate-private.conf"
_PR_SET_PDEATHSIG: Final = 1


class ServiceError(RuntimeError):
    """A private server could not be started or stopped; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not accepts_connections(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.05)


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the thread that started it ends, so that
    a launcher killed outright (SIGKILL) leaves nothing running unseen."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _folder(root: Path | None, prefix: str) -> tuple[Path, bool]:
    """``root`` (made if missing), or a new temporary folder; and whether it is temporary."""
    if root is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    root.mkdir(parents=True, exist_ok=True)
    return root, False


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if not found:
        raise ServiceError("PostgreSQL is not installed: apt-get install -y postgresql")
    return Path(found[0]).parent


class PrivatePostgres:
    """A PostgreSQL cluster of our own, initialised in ``root`` on first start, trusting every
    login on 127.0.0.1 and on its socket in ``root``. As root, initdb and postgres run as the
    ``postgres`` user (they refuse root). ``durable=False`` trades crash safety for speed
    (tests, benchmarks). It can be stopped and started again (fault tests)."""

    def __init__(
        self, root: Path | None = None, port: int | None = None, *, durable: bool = True
    ) -> None:
        self.bindir = postgres_bindir()
        self.root, self.temporary = _folder(root, "fleetgate-pg-")
        self.datadir = self.root / "data"
        self.port = port or self._recorded_port() or free_port()
        self.durable = durable
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            reach = subprocess.run([*self._as_user, "test", "-w", str(self.root)], check=False)
            if reach.returncode:
                raise ServiceError(
                    f"the postgres user cannot reach {self.root}: let it traverse the folders "
                    "above (chmod o+x), or choose another folder"
                )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The superuser's, on the fleetgate database."""
        return self.login_url("postgres")

    def login_url(self, login: str, database: str = "fleetgate") -> str:
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    @property
    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def running(self) -> bool:
        """Whether a server runs from this cluster (say, left by an earlier run)."""
        return self.initialised and self._run("pg_ctl", "status", check=False).returncode == 0

    def _recorded_port(self) -> int | None:
        """The port of a cluster made earlier in this folder, if any."""
        for name in (_PG_SETTINGS, "postgresql.conf"):
            with contextlib.suppress(OSError):
                ports = re.findall(r"^port = (\d+)$", (self.datadir / name).read_text(), re.M)
                if ports:
                    return int(ports[-1])
        return None

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self._as_user, str(self.bindir / tool), "-D", str(self.datadir), *args],
            check=False,
            capture_output=True,
            text=True,
            start_new_session=True,  # a Ctrl-C meant for whoever started it must not hit it midway
        )
        if check and done.returncode:
            raise ServiceError(f"{tool} failed in {self.datadir}:\n{done.stdout}{done.stderr}")
        return done

    def _write_settings(self) -> None:
        settings = (
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
        )
        if not self.durable:
            settings += "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        # PostgreSQL's defaults, said here because a standby (PrivateStandby) relies on them.
        settings += "wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n"
        (self.datadir / _PG_SETTINGS).write_text(settings)
        main = self.datadir / "postgresql.conf"
        include = f"include_if_exists = '{_PG_SETTINGS}'\n"
        if include not in main.read_text():
            with main.open("a") as conf:
                conf.write(include)

    def start(self) -> None:
        """Initialise the cluster if new, start it (again, if one already runs from it) and
        make the fleetgate database if missing."""
        if not self.initialised:
            no_sync = [] if self.durable else ["--no-sync"]
            self._run("initdb", "-U", "postgres", "-A", "trust", "-E", "UTF8", *no_sync)
        self._write_settings()
        self._launch()
        with psycopg.connect(self.login_url("postgres", "postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'fleetgate'").fetchone():
                conn.execute("CREATE DATABASE fleetgate")

    def _launch(self) -> None:
        """Start the server (again, if one already runs from this cluster); back once it
        accepts connections."""
        if self.running():
            self.stop()
        log = str(self.root / "postgresql.log")
        self._run("pg_ctl", "-l", log, "-w", "-t", f"{START_TIMEOUT_S:.0f}", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions ended, a clean shutdown); ``immediate`` if that
        fails. Nothing to do if it is not running."""
        if not self.running():
            return
        done = self._run("pg_ctl", "-m", mode, "-w", "-t", "30", "stop", check=False)
        if done.returncode and mode != "immediate":
            done = self._run("pg_ctl", "-m", "immediate", "-w", "stop", check=False)
        if done.returncode:
            raise ServiceError(f"pg_ctl stop failed in {self.datadir}:\n{done.stderr}")

    def close(self) -> None:
        """Stop; a temporary cluster at once, and it is removed."""
        with contextlib.suppress(ServiceError):
            self.stop("immediate" if self.temporary else "fast")
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)


class PrivateStandby(PrivatePostgres):
    """A hot standby of ``primary`` (read-only), copied on first start by ``pg_basebackup -R``
    (which writes ``standby.signal`` and the ``primary_conninfo`` it streams with), then run
    on a port of its own, as the same user as the primary. The primary's pg_hba.conf is given
    a replication entry for 127.0.0.1 if it has none. It can be stopped and started again."""

    def __init__(
        self, primary: PrivatePostgres, root: Path | None = None, port: int | None = None
    ) -> None:
        super().__init__(root, port, durable=primary.durable)
        self.primary = primary

    def start(self) -> None:
        """Copy the primary if this standby is new, then start it; back once it accepts
        connections (it may still be catching up: see ``wait_for_replay``)."""
        if not self.initialised:
            self._allow_replication()
            no_sync = [] if self.durable else ["--no-sync"]
            self._run(
                "pg_basebackup",
                *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
                *("-R", "-X", "stream", "-c", "fast", *no_sync),
            )
        self._write_settings()
        self._launch()

    def _allow_replication(self) -> None:
        hba = self.primary.datadir / "pg_hba.conf"
        entries = [line.split() for line in hba.read_text().splitlines()]
        local = [entry for entry in entries if "127.0.0.1/32" in entry]
        if any(entry[:2] == ["host", "replication"] for entry in local):
            return
        with hba.open("a") as conf:
            conf.write("host replication all 127.0.0.1/32 trust\n")
        self.primary._run("pg_ctl", "reload")  # a helper of the same class

    def wait_for_replay(self, timeout: float = 20.0) -> None:
        """Until the standby has replayed everything the primary had written when called
        (its insert position: with synchronous_commit off, a commit may not be written yet)."""
        with psycopg.connect(self.primary.login_url("postgres", "postgres")) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.login_url("postgres", "postgres"), autocommit=True) as conn:
            while True:
                caught_up = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)
                ).fetchone()
                if caught_up and caught_up[0]:
                    return
                if time.monotonic() > deadline:
                    raise ServiceError(f"the standby on port {self.port} lags after {timeout} s")
                time.sleep(0.05)


class PrivateMosquitto:
    """A Mosquitto of our own with the project's settings (``mosquitto/fleetgate.conf``).
    Anonymous on ``port``; or ``secure``: nobody without a login (``mosquitto/security.conf``,
    its password and ACL files in ``root``, written by ``gateway.broker_sync``), on ``port`` for
    the services and over TLS on ``tls_port`` with a private CA, made at start if missing."""

    def __init__(
        self,
        root: Path | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        *,
        secure: bool = False,
        extra_config: str = "",
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise ServiceError("Mosquitto is not installed: apt-get install -y mosquitto")
        self.binary = binary
        self.root, self.temporary = _folder(root, "fleetgate-mqtt-")
        self.port = port or free_port()
        self.tls_port = tls_port or free_port()
        self.secure = secure
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

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

    @property
    def log_file(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def config_file(self) -> Path:
        return self.root / "mosquitto.conf"

    def sync_env(self) -> dict[str, str]:
        """Where ``gateway.broker_sync`` (init and run) finds this broker's files."""
        return {
            "MOSQUITTO_PASSWORD_FILE": str(self.password_file),
            "MOSQUITTO_ACL_FILE": str(self.acl_file),
            "MOSQUITTO_PID_FILE": str(self.pid_file),
            "MOSQUITTO_CERTS_DIR": str(self.certs),
            "MOSQUITTO_CERT_NAMES": "localhost,127.0.0.1",
        }

    def _secure_listeners(self) -> str:
        """security.conf with its paths in this broker's folder, behind both listeners; the
        CA and empty login files if nothing (broker_sync init) made them yet."""
        if not self.ca_file.exists():
            make_private_ca(self.certs)
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.password_file, self.acl_file):
            if not path.exists():
                path.write_text("")
        security = (PROJECT / "mosquitto" / "security.conf").read_text()
        security = security.replace("/mosquitto/logins/", f"{self.password_file.parent}/")
        security = security.replace("/mosquitto/data/mosquitto.pid", str(self.pid_file))
        if " /mosquitto/" in security:
            raise ServiceError("mosquitto/security.conf names a path this broker does not place")
        return (
            f"listener {self.port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"listener {self.tls_port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"cafile {self.ca_file}\ncertfile {self.certs / 'server.crt'}\n"
            f"keyfile {self.certs / 'server.key'}\ntls_version tlsv1.2\n"
            f"{security}\n"
        )

    def write_config(self) -> Path:
        if self.secure:
            listeners = self._secure_listeners()
        else:
            listeners = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        project_settings = (PROJECT / "mosquitto" / "fleetgate.conf").read_text()
        self.config_file.write_text(
            "# Written at every start by fleetgate_tools.private_services; edit mosquitto/.\n"
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\nper_listener_settings false\n"
            f"{listeners}"
            f"persistence_location {self.root}/\n"
            f"log_dest file {self.log_file}\n"
            f"{project_settings}\n{self.extra_config}\n"
        )
        return self.config_file

    def start(self, output: Path | None = None, *, tied: bool = False) -> subprocess.Popen[bytes]:
        """Start it, its stdout and stderr to ``output`` (else nowhere), in a session of its own
        (``tied``: it also dies with the thread that starts it); back once it listens."""
        self.write_config()
        with contextlib.ExitStack() as files:
            out = files.enter_context(output.open("ab")) if output else subprocess.DEVNULL
            self.process = process = subprocess.Popen(
                [self.binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent if tied else None,  # noqa: PLW1509 - no threads
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in (self.port, self.tls_port) if self.secure else (self.port,):
            while not accepts_connections(port):
                if process.poll() is not None:
                    raise ServiceError(
                        f"mosquitto exited with {process.returncode} before it listened on "
                        f"{port}; see {output or self.log_file}"
                    )
                if time.monotonic() > deadline:
                    raise ServiceError(f"mosquitto does not listen on {port} after 60 s")
                time.sleep(0.05)
        return process

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send ``sig`` (SIGTERM: it saves its sessions and exits) and wait; killed after
        ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Kill it; a temporary broker's folder is removed."""
        self.stop(signal.SIGKILL)
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)


def _rabbitmq_password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class PrivateRabbitMQ:
    """A RabbitMQ node of our own with the MQTT plugin (Debian's ``rabbitmq-server``), for the
    tests of the clustered-broker path (docs/rabbitmq.md). Its own HOME (Erlang cookie), node
    name, epmd port, AMQP, MQTT and distribution ports, configuration and data in ``root``;
    the package's wrapper (which switches user and reads /etc/rabbitmq) is bypassed. As root it
    runs as the ``rabbitmq`` user. MQTT clients without a login are taken as ``fleetgate``;
    ``logins`` adds users (name: password) with every right on the default vhost; topic
    permissions are ``topic_permissions`` (definitions' own JSON form) if given."""

    USER: Final = "fleetgate"
    PASSWORD: Final = "fleetgate"

    def __init__(
        self,
        root: Path | None = None,
        *,
        prefetch: int = 2000,
        subscription_ttl_ms: int = 7 * 86_400_000,
        durable_queue_type: str = "classic",
        logins: dict[str, str] | None = None,
        topic_permissions: list[dict[str, str]] | None = None,
        extra_config: str = "",
    ) -> None:
        self.script = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if not self.script.exists():
            raise ServiceError("RabbitMQ is not installed: apt-get install -y rabbitmq-server")
        self.root, self.temporary = _folder(root, "fleetgate-rabbitmq-")
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"fleetgate-{self.port}@localhost"
        self.prefetch = prefetch
        self.subscription_ttl_ms = subscription_ttl_ms
        self.durable_queue_type = durable_queue_type  # quorum: replicated in a cluster
        self.logins = {self.USER: self.PASSWORD, **(logins or {})}
        self.topic_permissions = topic_permissions or []
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None
        # As root, the node runs as rabbitmq (Popen's user=, no runuser in between: a signal
        # then reaches the script itself, whose trap stops the node cleanly).
        self._user = "rabbitmq" if os.geteuid() == 0 else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "rabbit.log"

    def environment(self) -> dict[str, str]:
        """What the node's scripts (rabbitmq-server, rabbitmqctl) need to find this node."""
        return {
            "HOME": str(self.root),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _definitions(self) -> dict[str, object]:
        return {
            "users": [
                {
                    "name": name,
                    "password_hash": _rabbitmq_password_hash(password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": ["administrator"] if name == self.USER else [],
                }
                for name, password in self.logins.items()
            ],
            "vhosts": [{"name": "/"}],
            "permissions": [
                {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for name in self.logins
            ],
            "topic_permissions": self.topic_permissions,
        }

    def write_config(self) -> None:
        """The node's files; the subscription TTL is fixed before the first start, as it must
        be (docs/rabbitmq.md): a later change makes persistent sessions' subscribe fail."""
        (self.root / "log").mkdir(exist_ok=True)
        (self.root / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf
        (self.root / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        definitions = self.root / "definitions.json"
        definitions.write_text(json.dumps(self._definitions(), indent=1))
        (self.root / "rabbitmq.conf").write_text(
            "# Written at every start by fleetgate_tools.private_services.\n"
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"default_user = {self.USER}\ndefault_pass = {self.PASSWORD}\n"
            f"load_definitions = {definitions}\n"
            "mqtt.allow_anonymous = true\n"
            f"mqtt.default_user = {self.USER}\nmqtt.default_pass = {self.PASSWORD}\n"
            f"mqtt.prefetch = {self.prefetch}\n"
            f"mqtt.subscription_ttl = {self.subscription_ttl_ms}\n"
            f"mqtt.durable_queue_type = {self.durable_queue_type}\n"
            f"log.file = {self.log_file}\nlog.file.level = info\nlog.console = false\n"
            f"{self.extra_config}\n"
        )
        if self._user:
            owner = pwd.getpwnam(self._user)
            for path in (self.root, *self.root.rglob("*")):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.environment()}

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the node in a session of its own; back once its MQTT listener accepts
        connections (the plugin is the last thing to start)."""
        self.write_config()
        with (self.root / "startup.log").open("ab") as out:
            self.process = process = subprocess.Popen(
                [str(self.script)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env(),
                user=self._user,
                group=self._user,
                extra_groups=[] if self._user else None,
            )
        deadline = time.monotonic() + timeout
        while not accepts_connections(self.port):
            if process.poll() is not None:
                raise ServiceError(
                    f"rabbitmq-server exited with {process.returncode} before it listened on "
                    f"{self.port}; see {self.root / 'startup.log'} and {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"RabbitMQ does not listen on {self.port} after {timeout} s")
            time.sleep(0.1)

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl`` against this node (slow: an Erlang VM per call)."""
        done = subprocess.run(
            [str(self.script.with_name("rabbitmqctl")), *args],
            capture_output=True,
            text=True,
            check=False,
            env=self._env(),
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user else None,
        )
        if done.returncode:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the script stops the node cleanly), killed after ``timeout``; then the
        node's own epmd."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        subprocess.run(
            [epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, check=False
        )

    def close(self) -> None:
        """Stop it; a temporary node's folder is removed."""
        self.stop()
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
