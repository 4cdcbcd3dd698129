"""Retention by tier: whole days of raw history dropped, expired rollups, dead letters and ended
alerts deleted in short chunks, each tier after its own setting. Planned first (what the dry run
prints), then applied through the database's functions, which check what may go."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Self

import psycopg

from gateway.lifecycle_statements import COUNT_EXPIRED, DROP_PARTITION, EXPIRE_ROWS
from gateway.partitions import HISTORY_TABLES, HistoryDay, history_days
from gateway.settings import Settings
from gateway.waiting import backoff_delay

logger = logging.getLogger(__name__)

# Rows deleted per call of fleetgate_expire_rows, each call a transaction: short enough that a
# late reading's rollup update waits for one at most a few milliseconds.
CHUNK_ROWS: Final = 5000
# A drop that gives up waiting for the history table's lock (100 ms) is tried again this many
# times in the run, after a growing pause of up to this long; then it waits for the next run.
_DROP_ATTEMPTS: Final = 5
_DROP_PAUSE_S: Final = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class RowTier:
    """A kind of rows that expire by age, and the tables that hold them."""

    name: str  # as the report and the metrics' label call it
    setting: str
    tables: tuple[str, ...]


HOURLY: Final = RowTier("hourly", "RETENTION_HOURLY_DAYS", ("meter_hourly", "vehicle_hourly"))
DAILY: Final = RowTier("daily", "RETENTION_DAILY_DAYS", ("meter_daily", "vehicle_daily"))
DEAD_LETTERS: Final = RowTier(
    "dead_letters", "RETENTION_DEAD_LETTER_DAYS", ("dead_letter", "dead_letter_overflow")
)
ALERTS: Final = RowTier("alerts", "RETENTION_ALERT_DAYS", ("alert",))  # ended ones, with events
ROW_TIERS: Final = (HOURLY, DAILY, DEAD_LETTERS, ALERTS)


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days kept per tier (0: for ever). A tier keeps that many whole UTC days before today."""

    raw_days: int
    hourly_days: int
    daily_days: int
    dead_letter_days: int
    alert_days: int

    @classmethod
    def of(cls, settings: Settings) -> Self:
        return cls(
            settings.retention_raw_days,
            settings.retention_hourly_days,
            settings.retention_daily_days,
            settings.retention_dead_letter_days,
            settings.retention_alert_days,
        )

    def days_of(self, tier: RowTier) -> int:
        return {
            HOURLY.name: self.hourly_days,
            DAILY.name: self.daily_days,
            DEAD_LETTERS.name: self.dead_letter_days,
            ALERTS.name: self.alert_days,
        }[tier.name]

    def history_kept_from(self, now: datetime) -> date | None:
        """The first day of raw history kept; the partitions of earlier days go."""
        return None if not self.raw_days else _today(now) - timedelta(days=self.raw_days)

    def rows_kept_from(self, tier: RowTier, now: datetime) -> datetime | None:
        """The time before which a tier's rows go (a UTC midnight, so that a plan made earlier
        in the day is what a run does)."""
        days = self.days_of(tier)
        if not days:
            return None
        return datetime.combine(_today(now) - timedelta(days=days), datetime.min.time(), UTC)


def _today(now: datetime) -> date:
    return now.astimezone(UTC).date()


@dataclasses.dataclass(frozen=True, slots=True)
class Expiry:
    """Rows of one table from before a time: to be deleted (a plan) or deleted (a run)."""

    tier: str
    table: str
    before: datetime
    rows: int


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPlan:
    """What a retention run would remove now."""

    history_kept_from: date | None
    partitions: tuple[HistoryDay, ...]
    expiries: tuple[Expiry, ...]  # every table of every tier that expires, even with 0 rows


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionDone:
    """What a retention run removed, and the drops it left for the next run."""

    dropped: tuple[HistoryDay, ...]
    deleted: tuple[Expiry, ...]
    postponed: tuple[HistoryDay, ...]  # the history table's lock never came within 100 ms


async def plan_retention(
    conn: psycopg.AsyncConnection[Any], policy: RetentionPolicy, now: datetime
) -> RetentionPlan:
    kept_from = policy.history_kept_from(now)
    partitions = (
        () if kept_from is None else tuple(d for d in await history_days(conn) if d.day < kept_from)
    )
    expiries = []
    for tier in ROW_TIERS:
        before = policy.rows_kept_from(tier, now)
        if before is None:
            continue
        for table in tier.tables:
            cur = await conn.execute(COUNT_EXPIRED[table], {"before": before})
            row = await cur.fetchone()
            expiries.append(Expiry(tier.name, table, before, int(row[0]) if row else 0))
    return RetentionPlan(kept_from, partitions, tuple(expiries))


async def apply_retention(
    conn: psycopg.AsyncConnection[Any],
    plan: RetentionPlan,
    on_lock_timeout: Callable[[], None] = lambda: None,
) -> RetentionDone:
    """Carry out ``plan`` on an autocommit connection: each partition dropped in a transaction of
    its own, oldest first; each table's expired rows deleted in chunks of CHUNK_ROWS."""
    dropped = []
    postponed = []
    for day in plan.partitions:
        outcome = await _drop(conn, day, on_lock_timeout)
        if outcome is None:
            postponed.append(day)
        elif outcome:
            dropped.append(day)
            logger.info("retention: dropped %s (%d bytes)", day.table, day.total_bytes)
    deleted = []
    for expiry in plan.expiries:
        rows = await _expire(conn, expiry.table, expiry.before)
        deleted.append(dataclasses.replace(expiry, rows=rows))
        if rows:
            logger.info(
                "retention: deleted %d rows of %s from before %s", rows, expiry.table, expiry.before
            )
    return RetentionDone(tuple(dropped), tuple(deleted), tuple(postponed))


async def _drop(
    conn: psycopg.AsyncConnection[Any], day: HistoryDay, on_lock_timeout: Callable[[], None]
) -> bool | None:
    """True once dropped, False if it was gone already, None if the lock never came."""
    for attempt in range(_DROP_ATTEMPTS):
        try:
            cur = await conn.execute(DROP_PARTITION, (HISTORY_TABLES[day.kind], day.day))
        except psycopg.errors.LockNotAvailable:
            on_lock_timeout()
            delay = backoff_delay(attempt + 4, _DROP_PAUSE_S)
            logger.info(
                "retention: %s waited 100 ms for its table's lock (writers or readers hold it);"
                " trying again in %.1f s",
                day.table,
                delay,
            )
            await asyncio.sleep(delay)
            continue
        row = await cur.fetchone()
        return bool(row and row[0])
    logger.warning(
        "retention: %s could not be dropped: the history table's lock did not come within"
        " 100 ms in %d attempts; the next run tries again",
        day.table,
        _DROP_ATTEMPTS,
    )
    return None


async def _expire(conn: psycopg.AsyncConnection[Any], table: str, before: datetime) -> int:
    total = 0
    while True:
        cur = await conn.execute(EXPIRE_ROWS, (table, before, CHUNK_ROWS))
        row = await cur.fetchone()
        deleted = int(row[0]) if row else 0
        total += deleted
        if deleted < CHUNK_ROWS:
            return total
