"""The dashboards' reads on streaming replicas (DATABASE_READ_URL): a small pool per replica, each
looked at every REPLICA_CHECK_S for its recovery state and lag; a read takes the next usable
replica in turn, else the primary. What stays on the primary: every write, token checks (so a
revoke acts at once), health, and a token's reads for READ_YOUR_WRITES_S after its write."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Final

import msgspec
import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from http_api.auth import TOKEN_HASH

logger = logging.getLogger(__name__)

REPLICA_CHECK_S: Final = 1.0
# A look at a replica gives up after this; the replica then counts as unreachable.
_PROBE_TIMEOUT_S: Final = 1.0
# A request with this header and the value "primary" reads the primary, whatever else holds.
READ_HEADER: Final = "Fleetgate-Read"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_FORGET_WRITERS_AT: Final = 10_000  # tokens remembered before the expired ones are dropped

# Lag: 0 while the replica streams and has replayed all it received (an idle primary sends
# nothing, and now() - pg_last_xact_replay_timestamp() would grow without any lag); otherwise
# the age of the last replayed commit, so a replica cut off from its primary ages out.
_REPLICA_STATE: Final = b"""
SELECT pg_is_in_recovery() AS in_recovery,
       EXISTS (SELECT FROM pg_stat_wal_receiver) AS streaming,
       CASE WHEN EXISTS (SELECT FROM pg_stat_wal_receiver)
                 AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
       END AS lag_s
"""


class ReplicaHealth(msgspec.Struct, rename="camel"):
    """A read replica as last seen. usable: it gets reads (reachable, in recovery, lag at most
    MAX_REPLICA_LAG_S); otherwise its reads go to the primary and ``error`` says why."""

    name: str
    address: str  # host:port/database, never a password
    usable: bool
    in_recovery: bool | None
    streaming: bool | None
    lag_seconds: float | None
    checked_seconds_ago: float | None
    reads: int  # reads sent to it since the API started
    error: str | None


class Replica:
    """One replica's pool and what its latest look found."""

    def __init__(self, name: str, url: str, pool: AsyncConnectionPool) -> None:
        self.name = name
        self.address = _address(url)
        self.pool = pool
        self.usable = False
        self.in_recovery: bool | None = None
        self.streaming: bool | None = None
        self.lag_s: float | None = None
        self.checked_at: float | None = None
        self.reads = 0
        self.error: str | None = "not looked at yet"

    async def look(self, max_lag_s: float) -> None:
        """Judge the replica afresh; never raises (an unreachable replica is a state)."""
        try:
            async with (
                asyncio.timeout(_PROBE_TIMEOUT_S),
                self.pool.connection(timeout=_PROBE_TIMEOUT_S) as conn,
            ):
                row = await (await conn.execute(_REPLICA_STATE)).fetchone()
        except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
            self.in_recovery = self.streaming = self.lag_s = None
            self._judged(f"unreachable: {_one_line(exc)}")
            return
        assert row is not None  # a SELECT without FROM returns one row
        self.in_recovery, self.streaming, self.lag_s = row
        if not self.in_recovery:
            self._judged("not in recovery (promoted?): it may have left the primary's history")
        elif self.lag_s is None:
            self._judged("lag unknown: nothing replayed and not streaming")
        elif self.lag_s > max_lag_s:
            self._judged(f"{self.lag_s:.1f} s behind (MAX_REPLICA_LAG_S {max_lag_s:g})")
        else:
            self._judged(None)

    def _judged(self, error: str | None) -> None:
        if error is None and not self.usable:
            logger.info("replica %s (%s) takes reads", self.name, self.address)
        elif error is not None and (self.usable or error != self.error):
            logger.warning(
                "replica %s (%s) %s; its reads go to the primary", self.name, self.address, error
            )
        self.usable = error is None
        self.error = error
        self.checked_at = time.monotonic()

    def health(self) -> ReplicaHealth:
        ago = None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1)
        lag = None if self.lag_s is None else round(max(self.lag_s, 0.0), 3)
        return ReplicaHealth(
            self.name,
            self.address,
            self.usable,
            self.in_recovery,
            self.streaming,
            lag,
            ago,
            self.reads,
            self.error,
        )


class ReadPools:
    """Which pool a read takes: the replicas in turn, skipping unusable ones; else the primary."""

    def __init__(
        self,
        primary: AsyncConnectionPool,
        replicas: list[Replica],
        max_lag_s: float,
        read_your_writes_s: float,
    ) -> None:
        self.primary = primary
        self.replicas = replicas
        self.primary_reads = 0
        self._max_lag_s = max_lag_s
        self._read_your_writes_s = read_your_writes_s
        self._turn = itertools.count()
        self._writes: dict[bytes, float] = {}  # token hash: when its latest write was seen

    def choose(self, *, primary: bool = False) -> AsyncConnectionPool:
        if not primary and self.replicas:
            start = next(self._turn)
            for step in range(len(self.replicas)):
                replica = self.replicas[(start + step) % len(self.replicas)]
                if replica.usable:
                    replica.reads += 1
                    return replica.pool
        self.primary_reads += 1
        return self.primary

    def wrote(self, token_hash: bytes) -> None:
        now = time.monotonic()
        if len(self._writes) >= _FORGET_WRITERS_AT:
            horizon = now - self._read_your_writes_s
            self._writes = {key: at for key, at in self._writes.items() if at > horizon}
        self._writes[token_hash] = now

    def wrote_recently(self, token_hash: bytes | None) -> bool:
        if token_hash is None or token_hash not in self._writes:
            return False
        return time.monotonic() - self._writes[token_hash] <= self._read_your_writes_s

    async def watch(self) -> None:
        """Look at every replica each REPLICA_CHECK_S, for as long as the API serves."""
        while True:
            await asyncio.gather(*(replica.look(self._max_lag_s) for replica in self.replicas))
            await asyncio.sleep(REPLICA_CHECK_S)

    def health(self) -> list[ReplicaHealth]:
        return [replica.health() for replica in self.replicas]


READ_POOLS: Final = web.AppKey("read_pools", ReadPools)
_CHOSEN: Final = web.RequestKey("read_pool", AsyncConnectionPool)


def read_pool(request: web.Request) -> AsyncConnectionPool:
    """The pool for a read-only view's queries (a view that writes takes the primary's POOL);
    one per request, so that its queries see one database."""
    if _CHOSEN in request:
        return request[_CHOSEN]
    pools = request.app[READ_POOLS]
    asked = request.headers.get(READ_HEADER, "").strip().lower() == "primary"
    chosen = pools.choose(primary=asked or pools.wrote_recently(request.get(TOKEN_HASH)))
    request[_CHOSEN] = chosen
    return chosen


@web.middleware
async def remember_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Inside the token check: a token's write sends its reads to the primary for a while,
    counted from both the write's start (reads sent meanwhile) and its answer."""
    token_hash = request.get(TOKEN_HASH)
    if request.method in _SAFE_METHODS or token_hash is None:
        return await handler(request)
    pools = request.app[READ_POOLS]
    pools.wrote(token_hash)
    try:
        return await handler(request)
    finally:
        pools.wrote(token_hash)


@contextlib.asynccontextmanager
async def open_read_pools(
    primary: AsyncConnectionPool,
    urls: tuple[str, ...],
    size: int,
    max_lag_s: float,
    read_your_writes_s: float,
) -> AsyncIterator[ReadPools]:
    """A pool per replica, opened without waiting: a replica down at start is only unusable.
    Plain connections (no staging tables: a standby refuses even temporary tables)."""
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for number, url in enumerate(urls, start=1):
            pool: AsyncConnectionPool = AsyncConnectionPool(
                url,
                min_size=size,
                max_size=size,
                open=False,
                name=f"fleetgate-api-replica-{number}",
                kwargs={"application_name": f"fleetgate-api-replica-{number}"},
                check=AsyncConnectionPool.check_connection,
                timeout=5.0,
                reconnect_timeout=0,  # keep trying: the replica may be down for a while
            )
            replicas.append(Replica(f"replica-{number}", url, pool))
            await stack.enter_async_context(pool)
        yield ReadPools(primary, replicas, max_lag_s, read_your_writes_s)


def _address(url: str) -> str:
    parts = conninfo_to_dict(url)
    return f"{parts.get('host', '')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _one_line(error: BaseException) -> str:
    if isinstance(error, TimeoutError | PoolTimeout):
        return f"no answer within {_PROBE_TIMEOUT_S:g} s"
    return " ".join(str(error).split()) or type(error).__name__
