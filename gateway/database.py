"""The database connection pool: connections checked before use, each with the write side's
staging tables."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.partitions import Partitions
from gateway.schema import apply_schema
from gateway.write_statements import STAGING_DDL

# Partitions (gateway.partitions) and apply_schema (gateway.schema) have modules of their own;
# the gateway's service, the API, some tests and the benchmarks still import them from here.
__all__ = ["Partitions", "apply_schema", "open_pool"]


async def _configure(conn: psycopg.AsyncConnection[object]) -> None:
    await conn.execute(STAGING_DDL.encode())
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
