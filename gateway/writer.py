"""Writes a batch in one transaction: binary COPY into staging, then history, live rows and
dead letters (the statements: gateway/write_statements.py); retries it through outages and
splits it to find a message the database refuses."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway import registry
from gateway.batch import Batch, is_refusal, refused_by_database
from gateway.partitions import Partitions
from gateway.waiting import backoff_delay
from gateway.write_statements import (
    COPY_DEAD_LETTERS,
    COUNT_OVERFLOW,
    DEAD_LETTER_TYPES,
    STATEMENTS,
    KindStatements,
)

logger = logging.getLogger(__name__)

# Worth retrying as they are: the database or the network is the problem, not the data.
_TRANSIENT: Final = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    psycopg.errors.TransactionRollback,
)
# The message is what the database refuses. Any other database error is permanent: our
# statements or the schema are wrong (a missing table, a revoked right), so retrying as they are
# will not help, but re-applying the schema may; the batch is kept meanwhile.
_REFUSED: Final = (psycopg.DataError, psycopg.IntegrityError)


def _is_the_messages_fault(error: Exception) -> bool:
    """Refused by the database, or our own code failed on the data (not on the database)."""
    return isinstance(error, _REFUSED) or not isinstance(error, psycopg.Error | PoolTimeout)


@dataclasses.dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed batch changed."""

    messages: int = 0
    readings: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0  # kept whole
    dead_letters_counted: int = 0  # past the cap: counted in dead_letter_overflow

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )


async def _no_repair() -> None:
    pass


def _no_count(_: Exception) -> None:
    pass


class BatchWriter:
    """Commits batches, retrying through database outages; never gives up on a batch."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        partitions: Partitions,
        retry_max_delay_s: float,
        on_committed: Callable[[Batch, WriteResult], None],
        on_permanent_error: Callable[[], Awaitable[None]] = _no_repair,
        *,
        open_enrolment: bool = False,
        on_retry: Callable[[Exception], None] = _no_count,
    ):
        self._pool = pool
        self._partitions = partitions
        self._retry_max_delay_s = retry_max_delay_s
        self._on_committed = on_committed
        self._on_permanent_error = on_permanent_error  # counts it, repairs what it can
        self._open_enrolment = open_enrolment
        self._on_retry = on_retry  # told of each failed attempt that will be tried again
        self.failing: Exception | None = None  # why the last attempt failed, while it fails
        # How long the latest committed transaction took, from taking a connection to its
        # commit; read by on_committed (not the time the batch waited, nor failed attempts).
        self.last_commit_s = 0.0

    async def write(self, batch: Batch) -> WriteResult:
        """Write until committed. A batch the database refuses is split to find the culprit,
        which becomes a dead letter; everything else is stored."""
        attempt = 0
        while True:
            try:
                # readings of days past retention become dead letters here
                batch = await self._partitions.prepare(batch)
                result = await self._write_once(batch)
            except _TRANSIENT as exc:
                self.failing = exc
                self._on_retry(exc)
                delay = backoff_delay(attempt, self._retry_max_delay_s)
                attempt += 1
                logger.warning(
                    "database unavailable, batch of %d kept, retrying in %.2f s: %s",
                    len(batch),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                if not _is_the_messages_fault(exc):  # permanent: repair, retry, never ack
                    self._on_retry(exc)
                    delay = backoff_delay(attempt, self._retry_max_delay_s)
                    attempt += 1
                    await self._permanent_error(batch, exc, delay)
                    continue
                self._partitions.forget()  # a partition may have been dropped under us
                return await self._write_refused(batch, exc)
            self.failing = None
            self._on_committed(batch, result)
            return result

    async def _permanent_error(self, batch: Batch, error: Exception, delay: float) -> None:
        self.failing = error
        logger.error(
            "database refused the gateway's statements for a batch of %d (%s: %s); "
            "the batch is kept unacknowledged, the schema is re-applied, retrying in %.1f s",
            len(batch),
            type(error).__name__,
            str(error).strip(),
            delay,
        )
        self._partitions.forget()
        try:
            await self._on_permanent_error()
        except (psycopg.Error, OSError) as exc:
            logger.error("re-applying the schema failed: %s", exc)  # noqa: TRY400
        await asyncio.sleep(delay)

    async def _write_refused(self, batch: Batch, error: Exception) -> WriteResult:
        if len(batch) > 1:
            logger.warning(
                "database refused a batch of %d (%s); writing its messages one by one",
                len(batch),
                error,
            )
            total = WriteResult()
            for single in batch.split():
                total += await self.write(single)
            return total
        # One message: is it the partition we thought existed, or the data? Retry once with
        # fresh partitions before blaming the message.
        try:
            batch = await self._partitions.prepare(batch)
            result = await self._write_once(batch)
        except Exception as exc:
            if not _is_the_messages_fault(exc):
                return await self.write(batch)  # retried there
            message = batch.messages[0]
            if is_refusal(message):  # cannot happen with sanitised text; never loop on it
                logger.exception(
                    "database refused even the dead letter of %r; payload %r "
                    "acknowledged without being stored",
                    message.topic,
                    message.payload[:1024],
                )
                result = WriteResult(messages=1)
                self._on_committed(batch, result)
                return result
            logger.warning(
                "database refused message on %r: %s; kept as a dead letter", message.topic, exc
            )
            error_text = (
                str(exc) if isinstance(exc, psycopg.Error) else f"{type(exc).__name__}: {exc}"
            )
            return await self.write(Batch([refused_by_database(message, error_text)]))
        self._on_committed(batch, result)
        return result

    async def _write_once(self, batch: Batch) -> WriteResult:
        started = time.monotonic()
        inserted = 0
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            refused = None if self._open_enrolment else await _refused_devices(conn, batch)
            meters, vehicles, dead_letters, overflow = batch.rows(refused)
            for rows, statements in (
                (meters, STATEMENTS["meter"]),
                (vehicles, STATEMENTS["vehicle"]),
            ):
                if rows:
                    await _copy(cur, statements.copy, statements.types, rows)
                    if self._open_enrolment:
                        await cur.execute(statements.register)
                    inserted += await _insert_history(conn, cur, statements)
                    await cur.execute(statements.update_live)
            if dead_letters:
                await _copy(cur, COPY_DEAD_LETTERS, DEAD_LETTER_TYPES, dead_letters)
            if overflow:
                await cur.executemany(COUNT_OVERFLOW, overflow)
        self.last_commit_s = time.monotonic() - started
        readings = len(meters) + len(vehicles)
        return WriteResult(
            messages=len(batch),
            readings=readings,
            inserted=inserted,
            duplicates=readings - inserted,
            dead_letters=len(dead_letters),
            dead_letters_counted=sum(row[3] for row in overflow),
        )


async def _copy(
    cur: psycopg.AsyncCursor[tuple[int]],
    statement: str,
    types: list[str],
    rows: Sequence[tuple[object, ...]],
) -> None:
    async with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)


async def _refused_devices(
    conn: psycopg.AsyncConnection[Any], batch: Batch
) -> dict[tuple[str, str], str]:
    """Devices of the batch that may not report (closed enrolment), with the reason."""
    refused = await registry.refusals(conn, *batch.devices())
    return {device: refusal.reason for device, refusal in refused.items()}


async def _insert_history(
    conn: psycopg.AsyncConnection[Any],
    cur: psycopg.AsyncCursor[tuple[int]],
    statements: KindStatements,
) -> int:
    """Store the staged readings and their rollups; the number inserted. Usually none is stored
    yet, and the statement without ON CONFLICT costs PostgreSQL ~30 % less per row (the
    ingest stream of bench.ingest); a redelivered reading makes it fail, and then the one that
    skips stored readings runs instead."""
    try:
        async with conn.transaction():  # a savepoint: the failed attempt leaves nothing
            return await _count_inserted(cur, statements.insert_new)
    except psycopg.errors.UniqueViolation:
        return await _count_inserted(cur, statements.insert_history)


async def _count_inserted(cur: psycopg.AsyncCursor[tuple[int]], statement: str) -> int:
    await cur.execute(statement)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
