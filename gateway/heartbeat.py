"""The gateway's heartbeat: its row in ``gateway_heartbeat``, upserted every few seconds, so that
the API's ``/health`` knows which gateways run, whether each reaches its broker and how much it
holds. It has a connection of its own and a bounded wait: a beat never takes a connection from
the write path, and one that fails is logged and counted, never fatal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final

import psycopg

from gateway.waiting import sleep_unless

logger = logging.getLogger(__name__)

# A beat waits at most its interval (so beats never pile up), but never less than this: a
# connect over a busy network may take a moment.
_MIN_TIMEOUT_S: Final = 1.0

# beat_at and stopped_at are the database's now(): the API judges every gateway's age on the
# same clock, whatever the hosts' clocks say.
_BEAT: Final = b"""
INSERT INTO gateway_heartbeat (client_id, host, pid, version, started_at, beat_at,
    broker_connected, backlog, write_error, stopped_at, sessions, leader)
VALUES (%(client_id)s, %(host)s, %(pid)s, %(version)s, %(started_at)s, now(),
    %(broker_connected)s, %(backlog)s, %(write_error)s, NULL, %(sessions)s, %(leader)s)
ON CONFLICT (client_id) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
    started_at = EXCLUDED.started_at, beat_at = EXCLUDED.beat_at,
    broker_connected = EXCLUDED.broker_connected, backlog = EXCLUDED.backlog,
    write_error = EXCLUDED.write_error, stopped_at = NULL, sessions = EXCLUDED.sessions,
    leader = EXCLUDED.leader
"""
# Only our own row: in a rolling restart the next process (same client id) may beat already.
_STOPPED: Final = b"""
UPDATE gateway_heartbeat
SET beat_at = now(), stopped_at = now(), broker_connected = false, backlog = %(backlog)s,
    write_error = %(write_error)s, sessions = '{}', leader = false
WHERE client_id = %(client_id)s AND host = %(host)s AND pid = %(pid)s
"""


def _version() -> str:
    try:
        return metadata.version("fleetgate")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION: Final = _version()


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayState:
    """What a beat reports: taken from the gateway at each beat."""

    broker_connected: bool
    backlog: int  # readings taken from the broker, not yet committed
    write_error: str | None  # why its writes fail, while they fail
    sessions: list[int] = dataclasses.field(default_factory=list)  # the broker sessions it owns
    leader: bool = False  # it judges and publishes alerts (gateway/replicas.py)


class Heartbeat:
    """Beats every ``interval_s`` until stopped, then records that the gateway stopped."""

    def __init__(
        self,
        database_url: str,
        client_id: str,
        interval_s: float,
        state: Callable[[], GatewayState],
        on_failure: Callable[[], None],
    ) -> None:
        self._database_url = database_url
        self._interval_s = interval_s
        self._timeout_s = max(interval_s, _MIN_TIMEOUT_S)
        self._state = state
        self._on_failure = on_failure
        self._identity = {
            "client_id": client_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": VERSION,
            "started_at": datetime.now(UTC),
        }
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.error: str | None = None  # why the latest beat was not recorded, while beats fail

    def __repr__(self) -> str:
        return f"<Heartbeat {self._identity['client_id']!r}>"

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while True:
                await self.beat()
                if await sleep_unless(stop, self._interval_s):
                    break
            await self.beat(stopped=True)
        finally:
            await self._close()

    async def beat(self, *, stopped: bool = False) -> bool:
        """Record one beat (or that the gateway stopped); False if it could not be recorded."""
        state = self._state()
        params = {
            **self._identity,
            "broker_connected": state.broker_connected,
            "backlog": state.backlog,
            "write_error": state.write_error,
            "sessions": state.sessions,
            "leader": state.leader,
        }
        try:
            async with asyncio.timeout(self._timeout_s):
                conn = await self._connection()
                await conn.execute(_STOPPED if stopped else _BEAT, params)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self._failed(exc)
            await self._close()  # a connection that failed or timed out is not reused
            return False
        if self.error is not None:
            logger.info("heartbeat in %r recorded again", self)
        self.error = None
        return True

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True, application_name="fleetgate-heartbeat"
            )
        return self._conn

    def _failed(self, error: Exception) -> None:
        reason = "timed out" if isinstance(error, TimeoutError) else " ".join(str(error).split())
        reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
        self._on_failure()
        if self.error is None:  # once per outage: the writer logs the database's state already
            logger.warning("heartbeat in %r not recorded, will retry: %s", self, reason)
        self.error = reason

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except (psycopg.Error, OSError) as exc:
                logger.debug("closing the connection of %r: %s", self, exc)
