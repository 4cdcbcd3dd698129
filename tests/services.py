"""Private PostgreSQL and Mosquitto processes for the tests: free ports, temporary folders.

Nothing here touches a shared server. As root, PostgreSQL runs as the ``postgres`` user (initdb
and postgres refuse root).
"""

from __future__ import annotations

import contextlib
import glob
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

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
    return Path(found[0]).parent


class Postgres:
    """A throw-away PostgreSQL cluster that can be stopped and started again (fault tests)."""

    def __init__(self) -> None:
        self.bindir = _postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="fleetgate-pg-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 128MB\n"
            )
        self.start()
        self._run_psql("CREATE DATABASE fleetgate")

    @classmethod
    def existing(cls, root: Path) -> Postgres:
        """A cluster made earlier by this class and kept (stopped) in ``root``; not started."""
        server = cls.__new__(cls)
        server.bindir = _postgres_bin()
        server.root = root
        server.datadir = root / "data"
        ports = re.findall(
            r"^port = (\d+)$", (server.datadir / "postgresql.conf").read_text(), re.M
        )
        server.port = int(ports[-1])
        server._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return server

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/fleetgate"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self.bindir / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def _run_psql(self, sql: str) -> None:
        subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qc",
                sql,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class Mosquitto:
    """A private broker with the project's settings (mosquitto/fleetgate.conf) on a free port."""

    def __init__(self, extra_config: str = "", *, secure: bool = False) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("Mosquitto is not installed: apt-get install -y mosquitto")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="fleetgate-mqtt-"))
        self.port = free_port()
        self.tls_port = free_port()
        self.secure = secure
        user = pwd.getpwuid(os.geteuid()).pw_name
        project_settings = (PROJECT / "mosquitto" / "fleetgate.conf").read_text()
        if secure:
            listeners = self._secure_listeners()
        else:
            listeners = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        (self.root / "mosquitto.conf").write_text(
            f"user {user}\n"
            f"{listeners}"
            f"persistence_location {self.root}/\n"
            f"log_dest file {self.root}/mosquitto.log\n"
            f"{project_settings}\n{extra_config}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def _secure_listeners(self) -> str:
        """The project's security.conf, with its paths in this broker's folder, behind a plain
        and a TLS listener (a private CA's server certificate for 127.0.0.1)."""
        from gateway.certificates import make_private_ca  # noqa: PLC0415 - only secure brokers

        self.ca_file, cert, key = make_private_ca(self.root / "certs")
        (self.root / "passwd").mkdir()
        self.password_file = self.root / "passwd" / "fleetgate.passwd"
        self.acl_file = self.root / "passwd" / "fleetgate.acl"
        self.pid_file = self.root / "mosquitto.pid"
        self.password_file.write_text("")
        self.acl_file.write_text("")
        security = (PROJECT / "mosquitto" / "security.conf").read_text()
        security = security.replace("/mosquitto/logins/", f"{self.root}/passwd/").replace(
            "/mosquitto/data/mosquitto.pid", str(self.pid_file)
        )
        return (
            f"listener {self.port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"listener {self.tls_port} 127.0.0.1\nuse_username_as_clientid true\n"
            f"cafile {self.ca_file}\ncertfile {cert}\nkeyfile {key}\ntls_version tlsv1.2\n"
            f"{security}\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.root / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)
        self.process = None

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
