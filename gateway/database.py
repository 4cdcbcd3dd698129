"""The database connection pool and the daily history partitions."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.schema import apply_schema

# apply_schema moved to gateway.schema; the API, the tests and the benchmarks still take it here.
__all__ = ["HISTORY_TABLES", "Partitions", "apply_schema", "open_pool"]

logger = logging.getLogger(__name__)

HISTORY_TABLES: Final = {"meter": "meter_reading", "vehicle": "vehicle_reading"}

# Per-connection staging tables for binary COPY. ON COMMIT DELETE ROWS empties them at each
# commit, so they never grow (temporary tables are never autovacuumed).
_STAGING_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS meter_stage (
    name text, ts timestamptz, consumed_ac_mwh bigint, voltage real,
    received_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS vehicle_stage (
    name text, ts timestamptz, delivered_dc_mwh bigint, soc real, battery_temp real,
    received_at timestamptz
) ON COMMIT DELETE ROWS;
"""


async def _configure(conn: psycopg.AsyncConnection[object]) -> None:
    await conn.execute(_STAGING_DDL.encode())
    await conn.commit()  # else the pool sees the connection left in a transaction


class _CheckUnlessFresh:
    """The pool's liveness check (a round trip), skipped for a connection returned to the pool
    less than ``fresh_s`` ago: a busy API then pays no extra round trip per request, and after
    a database restart at most the connections used within that moment fail once (503)."""

    def __init__(self, fresh_s: float) -> None:
        self._fresh_s = fresh_s
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def returned(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned[conn] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned >= self._fresh_s:
            await AsyncConnectionPool.check_connection(conn)


@asynccontextmanager
async def open_pool(
    conninfo: str, size: int, name: str = "fleetgate", *, fresh_s: float = 0.0
) -> AsyncIterator[AsyncConnectionPool]:
    """A pool whose connections carry the staging tables; checked before use, so a restart
    costs no error (unless the connection was returned less than ``fresh_s`` ago)."""
    checker = _CheckUnlessFresh(fresh_s)
    pool: AsyncConnectionPool = AsyncConnectionPool(
        conninfo,
        min_size=size,
        max_size=size,
        open=False,
        name=name,
        configure=_configure,
        check=checker.check,
        reset=checker.returned,
        timeout=5.0,
        reconnect_timeout=0,  # keep trying for ever: the database may be down for a while
    )
    async with pool:
        yield pool


class Partitions:
    """Creates daily history partitions ahead of time, and on demand for the days a batch needs."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._known: set[tuple[str, date]] = set()

    async def ensure(self, days: set[tuple[str, date]]) -> None:
        missing = days - self._known
        if not missing:
            return
        async with self._pool.connection() as conn:
            for kind, day in sorted(missing):
                await conn.execute(
                    "SELECT fleetgate_ensure_partition(%s::regclass, %s)",
                    (HISTORY_TABLES[kind], day),
                )
                await conn.commit()  # one short lock per partition
                self._known.add((kind, day))
        logger.info(
            "history partitions ready: %s", ", ".join(f"{k} {d}" for k, d in sorted(missing))
        )

    async def ensure_ahead(self, days_ahead: int, now: datetime | None = None) -> None:
        today = (now or datetime.now(UTC)).date()
        await self.ensure(
            {
                (kind, today + timedelta(days=offset))
                for kind in HISTORY_TABLES
                for offset in range(-1, days_ahead + 1)
            }
        )

    def forget(self) -> None:
        """Forget what was seen: a partition may have been dropped (retention) meanwhile."""
        self._known.clear()
