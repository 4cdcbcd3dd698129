"""The tests' private PostgreSQL and Mosquitto: those of ``fleetgate_tools.private_services``
(shared with the benchmarks and the demo), temporary, on free ports, started when made."""

from __future__ import annotations

from pathlib import Path

from fleetgate_tools.private_services import (
    PROJECT,
    PrivateMosquitto,
    PrivatePostgres,
    free_port,
    wait_for_port,
)

__all__ = ["PROJECT", "Mosquitto", "Postgres", "free_port", "wait_for_port"]


class Postgres(PrivatePostgres):
    """A throw-away cluster, fast rather than crash-safe; it can be stopped and started again
    (fault tests)."""

    def __init__(self, root: Path | None = None, *, start: bool = True) -> None:
        super().__init__(root, durable=False)
        if start:
            self.start()

    @classmethod
    def existing(cls, root: Path) -> Postgres:
        """A cluster made earlier and kept (stopped) in ``root``; not started, nor removed at
        close."""
        return cls(root, start=False)


class Mosquitto(PrivateMosquitto):
    """A broker with the project's settings on a free port: anonymous, or ``secure`` (logins,
    ACLs, TLS on ``tls_port``)."""

    def __init__(self, extra_config: str = "", *, secure: bool = False) -> None:
        super().__init__(secure=secure, extra_config=extra_config)
        self.start()
