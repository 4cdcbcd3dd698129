"""The gateway's data lifecycle task: every RETENTION_CHECK_INTERVAL_S, retention, and in the hour
COMPACTION_HOUR compaction of the finished days, by one process of all that share the database
(an advisory lock: the others skip their turn), on a connection of its own; then the storage
metrics. A run that fails is logged and counted, and the next check tries again."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import psycopg

from gateway.compaction import Compacted, CompactionPlan, compact, plan_compaction
from gateway.lifecycle_statements import LIFECYCLE_LOCK, TRY_LOCK, UNLOCK
from gateway.metrics import LifecycleMetrics
from gateway.partitions import Partitions
from gateway.retention import RetentionDone, RetentionPolicy, apply_retention, plan_retention
from gateway.settings import Settings
from gateway.storage_report import TIERS, StorageReport, read_storage, size
from gateway.waiting import sleep_unless

logger = logging.getLogger(__name__)

# A check meant for the compaction hour wakes this long into it, not a moment before.
_HOUR_MARGIN_S: Final = 1.0
T = TypeVar("T")


class LifecycleBusyError(Exception):
    """Another process is running retention and compaction on this database now."""


@dataclasses.dataclass(frozen=True, slots=True)
class LifecycleRun:
    """What one run did."""

    retention: RetentionDone
    compaction: CompactionPlan  # as planned before compacting
    compacted: list[Compacted]
    storage: StorageReport


@contextlib.asynccontextmanager
async def lifecycle_lock(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[bool]:
    """Held for the block if no other session holds it: True; else False at once."""
    cur = await conn.execute(TRY_LOCK, (LIFECYCLE_LOCK,))
    row = await cur.fetchone()
    held = bool(row and row[0])
    try:
        yield held
    finally:
        if held and not conn.closed:
            with contextlib.suppress(psycopg.Error):  # a closed session releases it anyway
                await conn.execute(UNLOCK, (LIFECYCLE_LOCK,))


async def run_lifecycle(
    conn: psycopg.AsyncConnection[Any],
    settings: Settings,
    now: datetime,
    *,
    compacting: bool,
    compact_until: datetime | None = None,
    metrics: LifecycleMetrics | None = None,
) -> LifecycleRun:
    """Retention, then (if ``compacting`` and this login may) compaction, none of it begun after
    ``compact_until``, on an autocommit connection; LifecycleBusyError if another session runs
    them."""
    async with lifecycle_lock(conn) as held:
        if not held:
            raise LifecycleBusyError("another process is running retention and compaction now")
        plan = await plan_retention(conn, RetentionPolicy.of(settings), now)
        retention = await apply_retention(
            conn, plan, metrics.lock_timeouts.inc if metrics else lambda: None
        )
        due = await plan_compaction(
            conn, now, settings.compaction_grace_hours, plan.history_kept_from
        )
        compacted: list[Compacted] = []
        if compacting and due.refused is None:
            compacted = await compact(conn, due, compact_until)
        elif compacting and due.due:
            logger.warning("compaction: %d partitions due, skipped: %s", len(due.due), due.refused)
        storage = await read_storage(conn)
    return LifecycleRun(retention, due, compacted, storage)


class Lifecycle:
    """Runs retention and compaction on schedule until ``stop`` is set (gateway/service.py)."""

    def __init__(
        self, settings: Settings, metrics: LifecycleMetrics, partitions: Partitions | None = None
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._partitions = partitions  # forgets what it knew once a day is dropped

    async def run(self, stop: asyncio.Event) -> None:
        interval = self._settings.retention_check_interval_s
        if not interval:
            await stop.wait()
            return
        while not stop.is_set():
            now = datetime.now(UTC)
            await self._check(stop, now, compacting=now.hour == self._settings.compaction_hour)
            if await sleep_unless(stop, self.wait_s(datetime.now(UTC))):
                return

    def wait_s(self, now: datetime) -> float:
        """Until the next check: the interval, or the start of the compaction hour if sooner."""
        wait = self._settings.retention_check_interval_s
        hour = self._settings.compaction_hour
        if hour is not None:
            start = now.astimezone(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
            if start <= now:
                start += timedelta(days=1)
            wait = min(wait, (start - now).total_seconds() + _HOUR_MARGIN_S)
        return wait

    async def _check(self, stop: asyncio.Event, now: datetime, *, compacting: bool) -> None:
        # within the compaction hour: what is left waits for the next day's
        hour_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        try:
            run = await _unless_stopped(
                stop, self.run_once(now, compacting=compacting, compact_until=hour_end)
            )
        except LifecycleBusyError:
            self._metrics.runs.labels(result="skipped").inc()
            logger.info("lifecycle: another process runs retention now; skipped")
            await self._refresh_storage()
            return
        except (psycopg.Error, OSError) as exc:
            self._metrics.runs.labels(result="failed").inc()
            logger.warning(
                "lifecycle: retention or compaction failed (%s: %s); the next check tries again",
                type(exc).__name__,
                " ".join(str(exc).split()),
            )
            return
        if run is not None:
            self._metrics.runs.labels(result="done").inc()

    async def run_once(
        self, now: datetime, *, compacting: bool, compact_until: datetime | None = None
    ) -> LifecycleRun:
        async with await psycopg.AsyncConnection.connect(
            self._settings.database_url, autocommit=True
        ) as conn:
            run = await run_lifecycle(
                conn,
                self._settings,
                now,
                compacting=compacting,
                compact_until=compact_until,
                metrics=self._metrics,
            )
        if run.retention.dropped and self._partitions is not None:
            self._partitions.forget()
        self._count(run)
        storage = run.storage
        logger.info(
            "lifecycle: %d partitions dropped, %d rows deleted, %d partitions compacted (%s"
            " saved); raw history %s from %s to %s",
            len(run.retention.dropped),
            sum(e.rows for e in run.retention.deleted),
            len(run.compacted),
            size(sum(max(0, c.bytes_saved) for c in run.compacted)),
            size(storage.tier_bytes["raw"]),
            storage.oldest_day or "-",
            storage.newest_day or "-",
        )
        return run

    def _count(self, run: LifecycleRun) -> None:
        metrics = self._metrics
        metrics.partitions_dropped.inc(len(run.retention.dropped))
        for expiry in run.retention.deleted:
            metrics.rows_deleted.labels(tier=expiry.tier).inc(expiry.rows)
        for done in run.compacted:
            metrics.partitions_compacted.inc()
            metrics.compaction_bytes_saved.inc(max(0, done.bytes_saved))
        compacted = {(c.day.kind, c.day.day) for c in run.compacted}
        metrics.compaction_pending.set(
            sum((d.kind, d.day) not in compacted for d in run.compaction.due)
        )
        self._show(run.storage)

    async def _refresh_storage(self) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                self._settings.database_url, autocommit=True
            ) as conn:
                self._show(await read_storage(conn))
        except (psycopg.Error, OSError) as exc:
            logger.warning("lifecycle: could not read the storage figures: %s", exc)

    def _show(self, storage: StorageReport) -> None:
        for tier in TIERS:
            self._metrics.storage_bytes.labels(tier=tier).set(storage.tier_bytes[tier])
        for gauge, day in (
            (self._metrics.oldest_day, storage.oldest_day),
            (self._metrics.newest_day, storage.newest_day),
        ):
            if day is not None:
                gauge.set(datetime.combine(day, datetime.min.time(), UTC).timestamp())


async def _unless_stopped(stop: asyncio.Event, job: Awaitable[T]) -> T | None:
    """``job``'s result, or None once ``stop`` is set first: then it is cancelled (a statement
    running is cancelled in the server too)."""
    work = asyncio.ensure_future(job)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((work, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    return None if work.cancelled() else work.result()
