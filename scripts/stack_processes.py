"""Starting, watching and stopping the demo's processes (used by ``scripts/stack.py``).

Every process gets a session of its own, so a Ctrl-C at the terminal reaches only the launcher,
which then stops them one by one, in the order it chooses, and waits for each.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import pwd
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import psycopg

PROJECT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """A part of the stack failed to start or stopped running; the message says why."""


class Stopping(Exception):  # noqa: N818 - not an error: someone asked us to stop
    """SIGINT or SIGTERM arrived: leave whatever is being waited for and shut down."""


_signalled: list[int] = []


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    _signalled.append(signum)


def check_signals() -> None:
    if _signalled:
        raise Stopping


def pause(seconds: float) -> None:
    """Sleep in short steps so that a signal is noticed at once."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_signals()
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    check_signals()


def _die_with_launcher() -> None:
    # Runs in the child before exec: if the launcher is killed outright (SIGKILL), its children
    # get SIGTERM instead of running on unseen.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_port(env: str, default: int) -> int:
    """The port set in ``env``; else ``default`` if nobody listens there; else a free one."""
    if env in os.environ:
        return int(os.environ[env])
    if port_is_free(default):
        return default
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 0.5):
            return True
    except OSError:
        return False


@dataclasses.dataclass(slots=True)
class Child:
    """A process of the stack, its log file, and whether the stack is useless without it."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    required: bool
    reported: bool = False

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not stop within {timeout:.0f} s: killing it", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Its helpers, if any, share its process group; none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def spawn(name: str, argv: list[str], env: dict[str, str], logs: Path, *, required: bool) -> Child:
    log = logs / f"{name}.log"
    with log.open("wb") as out:  # one run per log: readiness is read from it
        process = subprocess.Popen(
            argv,
            cwd=PROJECT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_launcher,  # noqa: PLW1509 - the launcher starts no threads
        )
    return Child(name, process, log, required)


def wait_for(what: str, ready: Callable[[], bool], child: Child | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if child is not None and child.process.poll() is not None:
            raise StackError(
                f"{child.name} exited with code {child.process.returncode} before {what}; "
                f"last lines of {child.log}:\n{child.tail()}"
            )
        if time.monotonic() > deadline:
            raise StackError(f"no {what} after {READY_TIMEOUT_S:.0f} s")
        pause(0.1)


class EmbeddedPostgres:
    """A PostgreSQL cluster in the state folder, initialised on first use, run with pg_ctl."""

    def __init__(self, root: Path, port: int) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
        if not found:
            raise StackError("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bindir = found[0].parent
        self.root = root
        self.datadir = root / "data"
        self.port = port
        # initdb and postgres refuse to run as root: use the postgres user the package made.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            root.mkdir(parents=True, exist_ok=True)
            os.chown(root, owner.pw_uid, owner.pw_gid)
            if subprocess.run([*self.as_user, "test", "-w", str(root)], check=False).returncode:
                raise StackError(
                    f"the postgres user cannot reach {root}: let it traverse the folders above "
                    "(chmod o+x) or set FLEETGATE_STATE_DIR elsewhere"
                )
        else:
            root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The superuser's."""
        return self.login_url("postgres")

    def login_url(self, login: str) -> str:
        # trust: only 127.0.0.1 and a socket in the state folder are listened on.
        return f"postgresql://{login}@127.0.0.1:{self.port}/fleetgate"

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=False,
            capture_output=True,
            text=True,
            start_new_session=True,  # a Ctrl-C meant for the launcher must not hit it midway
        )
        if check and done.returncode:
            raise StackError(f"{tool} failed:\n{done.stdout}{done.stderr}")
        return done

    def start(self) -> None:
        if not (self.datadir / "PG_VERSION").exists():
            print(f"initialising a PostgreSQL cluster in {self.datadir}", flush=True)
            # trust: only 127.0.0.1 and a socket in the state folder are listened on.
            self._pg(
                "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8"
            )
        if self._pg("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0:
            print("a PostgreSQL from an earlier run is still up in the state folder: restarting it")
            self.stop()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {shlex.quote(str(self.root))}"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "postgresql.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'fleetgate'").fetchone():
                conn.execute("CREATE DATABASE fleetgate")

    def stop(self) -> None:
        done = self._pg(
            "pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop", check=False
        )
        if done.returncode:
            self._pg(
                "pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False
            )


@contextlib.contextmanager
def stopped_at_exit() -> Iterator[list[Callable[[], None]]]:
    """Collects stop actions; runs them newest first whatever happens, deaf to more signals."""
    stops: list[Callable[[], None]] = []
    try:
        yield stops
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if stops:
            print("\nstopping fleetgate demo ...", flush=True)
        for stop in reversed(stops):
            stop()
        if stops:
            print("everything stopped.", flush=True)


def install_signal_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
