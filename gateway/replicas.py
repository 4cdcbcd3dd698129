"""Replicas: which gateway process owns which of the GATEWAY_SESSIONS broker sessions, and which
one judges and publishes alerts, decided by PostgreSQL advisory locks.

Every replica holds, on one connection of its own, a shared "member" lock (so that the live
replicas can be counted) and an exclusive lock per session it owns; one of them also holds the
leader lock. PostgreSQL releases a dead process's locks when its connection drops, so its
sessions are free for the others at their next look (every REPLICA_TAKEOVER_S, or at once when a
replica that stops or joins notifies). Locks go before the work they guard never does: a session
is released only after its consumer has committed and acknowledged what it took and
disconnected, and when the lock connection drops, every session is stopped first (another
replica may own it a moment later).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import psycopg
from prometheus_client import CollectorRegistry, Gauge

from gateway.waiting import backoff_delay, sleep_unless, wait_any

logger = logging.getLogger(__name__)

# The second key of the two-key advisory locks; the first is the deployment's (its client id).
# Sessions are 0..GATEWAY_SESSIONS-1 (at most MAX_SESSIONS).
MAX_SESSIONS: Final = 1000
LEADER_KEY: Final = 1_000_000
MEMBER_KEY: Final = 1_000_001
CHANNEL: Final = "fleetgate_replicas"

# Every advisory lock of this deployment, with who holds it (application_name names the
# replica). objsubid 2: the two-key form; pg_locks shows other sessions' locks to every role.
_CENSUS: Final = b"""
SELECT l.objid::bigint AS key, l.pid, l.pid = pg_backend_pid() AS mine,
       coalesce(a.application_name, l.pid::text) AS holder
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid::bigint = %(ns)s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_TRY_LOCK: Final = b"SELECT pg_try_advisory_lock(%s, %s)"
_UNLOCK: Final = b"SELECT pg_advisory_unlock(%s, %s)"
_JOIN: Final = b"SELECT pg_advisory_lock_shared(%s, %s)"


def namespace(client_id: str) -> int:
    """The first lock key: one per deployment (its MQTT client id), as a signed int4."""
    value = zlib.crc32(client_id.encode())
    return value - 2**32 if value >= 2**31 else value


@dataclasses.dataclass(frozen=True, slots=True)
class Census:
    """Who holds what, as the locks say: replica name -> sessions held (members holding none
    included)."""

    sessions: dict[str, list[int]]
    leader: str | None

    def owned(self) -> set[int]:
        return {s for held in self.sessions.values() for s in held}


def share(sessions: int, replicas: int) -> int:
    """How many sessions a replica should hold: ceil(K/N)."""
    return math.ceil(sessions / max(1, replicas))


def may_take(holding: int, target: int, others: list[int]) -> bool:
    """Whether a replica holding ``holding`` sessions takes a free one: below its share, and
    holding no more than any other (so the one that just handed a session over does not take
    it back before the replica it was meant for)."""
    return holding < target and all(holding <= other for other in others)


def to_release(census: Census, me: str) -> bool:
    """Whether ``me`` should hand one session over: it holds the most (ties: the first name),
    and at least two more than the replica holding the fewest. One replica per round, so that
    two never give up the same share at once."""
    if len(census.sessions) < 2:
        return False
    most = max(census.sessions.items(), key=lambda item: (len(item[1]), _reverse(item[0])))
    fewest = min(len(held) for held in census.sessions.values())
    return most[0] == me and len(most[1]) >= fewest + 2


def _reverse(name: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in name)


class Replicas:
    """Takes and releases sessions and the leadership for one gateway process.

    ``take(session)`` must start consuming it; ``release(session)`` must return only once what
    it took is committed and acknowledged and its broker connection is closed. ``lead(True)``
    starts the alert work, ``lead(False)`` stops it (and returns once it stopped).
    """

    def __init__(
        self,
        database_url: str,
        client_id: str,
        name: str,
        *,
        sessions: int,
        takeover_s: float,
        retry_max_delay_s: float,
        take: Callable[[int], Awaitable[None]],
        release: Callable[[int], Awaitable[None]],
        lead: Callable[[bool], Awaitable[None]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._database_url = database_url
        self._ns = namespace(client_id)
        self.name = name
        self._sessions = sessions
        self._takeover_s = takeover_s
        self._retry_max_delay_s = retry_max_delay_s
        self._take = take
        self._release = release
        self._lead = lead
        self.held: set[int] = set()
        self.leader = False
        self.census = Census({}, None)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._poked = asyncio.Event()  # another replica joined, handed over or left
        self._held_gauge = Gauge(
            "fleetgate_replica_session_held",
            "1 for each broker session this replica owns (GATEWAY_SESSIONS)",
            ["session"],
            registry=registry,
        )
        self._leader_gauge = Gauge(
            "fleetgate_replica_leader",
            "1 while this replica judges and publishes alerts",
            registry=registry,
        )
        self._replicas_gauge = Gauge(
            "fleetgate_replicas", "Live gateway replicas, as the locks count them",
            registry=registry,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<Replicas {self.name!r} holding {sorted(self.held)}>"

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: keep the lock connection and the sessions it holds; then release
        everything, the work before its locks."""
        async with asyncio.TaskGroup() as tasks:
            listening = tasks.create_task(self._listen(), name="replica-notifications")
            try:
                await self._keep_sessions(stop)
            finally:
                listening.cancel()
                await self._leave()

    async def _keep_sessions(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                await self._connect()
                attempt = 0
                while not stop.is_set():
                    await self.rebalance()
                    await self._wait(stop)
            except (psycopg.Error, OSError) as exc:
                await self._lost(exc)
                delay = backoff_delay(attempt, self._retry_max_delay_s)
                attempt += 1
                await sleep_unless(stop, delay)

    async def _connect(self) -> None:
        self._conn = await psycopg.AsyncConnection.connect(
            self._database_url, autocommit=True, application_name=self.name[:63]
        )
        await self._conn.execute(_JOIN, (self._ns, MEMBER_KEY))
        await self._notify()  # the others count one more and hand over a share
        logger.info("replica %r joined", self.name)

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until the next look: REPLICA_TAKEOVER_S, a notification, or ``stop``."""
        await wait_any(self._takeover_s, stop, self._poked)
        self._poked.clear()

    async def _listen(self) -> None:
        """Until cancelled, on a connection of its own (a notification that arrives while the
        lock connection runs a look's queries would be missed there): set ``_poked`` at each
        notification. While it cannot listen, the looks every REPLICA_TAKEOVER_S still come."""
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True, application_name="fleetgate-replicas"
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}".encode())
                    attempt = 0
                    async for _ in conn.notifies():
                        self._poked.set()
            except (psycopg.Error, OSError) as exc:
                logger.debug("replica %r not listening (%s)", self.name, exc)
            await asyncio.sleep(backoff_delay(attempt, self._retry_max_delay_s))
            attempt += 1

    async def _notify(self) -> None:
        assert self._conn is not None
        await self._conn.execute(b"SELECT pg_notify(%s, %s)", (CHANNEL, self.name))

    async def read_census(self) -> Census:
        assert self._conn is not None
        cur = await self._conn.execute(_CENSUS, {"ns": self._ns % 2**32})
        sessions: dict[str, list[int]] = {}
        leader = None
        for key, _pid, _mine, holder in await cur.fetchall():
            if key == MEMBER_KEY:
                sessions.setdefault(holder, [])
            elif key == LEADER_KEY:
                leader = holder
            elif key < self._sessions:
                sessions.setdefault(holder, []).append(int(key))
        for held in sessions.values():
            held.sort()
        return Census(sessions, leader)

    async def rebalance(self) -> None:
        """One look: lead if nobody does, take free sessions up to the share, hand one over if
        this replica holds too many."""
        assert self._conn is not None
        census = await self.read_census()
        if not self.leader and census.leader is None and await self._lock(LEADER_KEY):
            self.leader = True
            self._leader_gauge.set(1)
            logger.info("replica %r leads: it judges and publishes alerts", self.name)
            await self._lead(True)
        target = share(self._sessions, len(census.sessions))
        others = [len(held) for name, held in census.sessions.items() if name != self.name]
        took = False
        for session in range(self._sessions):
            if not may_take(len(self.held), target, others):
                break
            if session not in census.owned() and await self._lock(session):
                self.held.add(session)
                self._held_gauge.labels(session=str(session)).set(1)
                logger.info("replica %r takes session %d", self.name, session)
                await self._take(session)
                took = True
        if took:  # the others look again: one may now hold more than its share
            await self._notify()
        census = await self.read_census()
        if to_release(census, self.name) and self.held:
            await self.hand_over(max(self.held))
            census = await self.read_census()
        self.census = census
        self._replicas_gauge.set(len(census.sessions))

    async def hand_over(self, session: int) -> None:
        """Stop consuming ``session`` (committed and acknowledged first), then free it."""
        logger.info("replica %r hands session %d over", self.name, session)
        await self._release(session)
        self.held.discard(session)
        self._held_gauge.labels(session=str(session)).set(0)
        if self._conn is not None:
            await self._conn.execute(_UNLOCK, (self._ns, session))
            await self._notify()

    async def _lock(self, key: int) -> bool:
        assert self._conn is not None
        cur = await self._conn.execute(_TRY_LOCK, (self._ns, key))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _stop_work(self) -> None:
        """Stop every session and the alerts (committed first): the locks are gone or going."""
        for session in sorted(self.held):
            await self._release(session)
            self._held_gauge.labels(session=str(session)).set(0)
        self.held.clear()
        if self.leader:
            self.leader = False
            self._leader_gauge.set(0)
            await self._lead(False)

    async def _lost(self, error: Exception) -> None:
        reason = " ".join(str(error).split()) or type(error).__name__
        if self._conn is not None:  # once per outage; the attempts after it fail to connect
            logger.warning(
                "replica %r lost its lock connection (%s); stopping sessions %s until it is back",
                self.name,
                reason,
                sorted(self.held),
            )
        else:
            logger.debug("replica %r cannot reach the database yet: %s", self.name, reason)
        await self._stop_work()
        await self._close()

    async def _leave(self) -> None:
        await self._stop_work()
        if self._conn is not None and not self._conn.closed:
            try:
                await self._conn.execute(b"SELECT pg_advisory_unlock_all()")
                await self._notify()  # the others take the sessions now, not at their next look
            except (psycopg.Error, OSError) as exc:
                logger.debug("leaving in %r: %s", self, exc)
        await self._close()
        logger.info("replica %r left", self.name)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._replicas_gauge.set(0)
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except (psycopg.Error, OSError) as exc:
                logger.debug("closing the lock connection of %r: %s", self, exc)
