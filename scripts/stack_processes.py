"""Starting, watching and stopping the demo's processes (used by ``scripts/stack.py``); its
private PostgreSQL and Mosquitto are ``fleetgate_tools.private_services``'.

Every process gets a session of its own, so a Ctrl-C at the terminal reaches only the launcher,
which then stops them one by one, in the order it chooses, and waits for each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from fleetgate_tools.private_services import die_with_parent

PROJECT = Path(__file__).resolve().parent.parent
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
            preexec_fn=die_with_parent,  # noqa: PLW1509 - the launcher starts no threads
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
