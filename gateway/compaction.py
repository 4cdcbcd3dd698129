"""Compaction of finished days: once a day has been over for a grace period, its history
partitions' indexes are rebuilt by REINDEX CONCURRENTLY (neither readers nor writers wait), once
per partition, recorded with the bytes it saved. A day's primary key is written out of order and
ends up about 30 % slack; rebuilt, it is packed."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from gateway.lifecycle_statements import (
    COMPACTED,
    INDEX_BYTES,
    LEFTOVER_INDEXES,
    MAY_REINDEX,
    RECORD_COMPACTION,
    drop_index,
    reindex,
)
from gateway.partitions import HistoryDay, history_days

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class CompactionPlan:
    """What a compaction would do now: the finished days' partitions not compacted yet, and the
    indexes an interrupted one left behind (dropped first). ``refused`` says why this login may
    not compact, if it may not."""

    due: tuple[HistoryDay, ...]
    leftovers: tuple[str, ...]
    refused: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Compacted:
    """One partition's indexes, rebuilt."""

    day: HistoryDay
    index_bytes_before: int
    index_bytes_after: int
    seconds: float

    @property
    def bytes_saved(self) -> int:
        return self.index_bytes_before - self.index_bytes_after


def finished_before(now: datetime, grace_hours: float) -> date:
    """Days before this one have been over for at least ``grace_hours``."""
    return (now.astimezone(UTC) - timedelta(hours=grace_hours)).date()


async def plan_compaction(
    conn: psycopg.AsyncConnection[Any],
    now: datetime,
    grace_hours: float,
    kept_from: date | None = None,
) -> CompactionPlan:
    """``kept_from``: days before it are left out (retention drops them)."""
    cur = await conn.execute(COMPACTED)
    compacted = {(kind, day) for kind, day in await cur.fetchall()}
    last = finished_before(now, grace_hours)
    due = tuple(
        d
        for d in await history_days(conn)
        if d.day < last
        and (kept_from is None or d.day >= kept_from)
        and (d.kind, d.day) not in compacted
    )
    cur = await conn.execute(LEFTOVER_INDEXES)
    leftovers = tuple(name for (name,) in await cur.fetchall())
    return CompactionPlan(due, leftovers, await _refusal(conn))


async def _refusal(conn: psycopg.AsyncConnection[Any]) -> str | None:
    cur = await conn.execute(MAY_REINDEX)
    row = await cur.fetchone()
    if row is None or row[0]:
        return None
    return (
        f"compaction needs the history tables' owner ({row[1]}): PostgreSQL 15 lets no other"
        " role REINDEX, and no function can run REINDEX CONCURRENTLY; run python -m gateway"
        " retention as a member of it once a day"
    )


async def compact(
    conn: psycopg.AsyncConnection[Any], plan: CompactionPlan, until: datetime | None = None
) -> list[Compacted]:
    """Carry out ``plan`` on an autocommit connection whose login owns the history tables: the
    leftovers dropped, then each due partition reindexed and recorded, oldest first, none begun
    after ``until`` (the rest are due next time). Cancelled midway (a shutdown), a REINDEX
    leaves an invalid index behind: the next plan's leftovers."""
    for index in plan.leftovers:
        await conn.execute(drop_index(index))
        logger.info("compaction: dropped %s, left invalid by an interrupted compaction", index)
    done: list[Compacted] = []
    for day in plan.due:
        if until is not None and datetime.now(UTC) >= until:
            logger.info(
                "compaction: the compaction hour is over; %d partitions wait for the next",
                len(plan.due) - len(done),
            )
            break
        before = await _index_bytes(conn, day.table)
        started = datetime.now(UTC)
        await conn.execute(reindex(day.table))
        after = await _index_bytes(conn, day.table)
        await conn.execute(RECORD_COMPACTION, (day.kind, day.day, before, after))
        compacted = Compacted(day, before, after, (datetime.now(UTC) - started).total_seconds())
        done.append(compacted)
        logger.info(
            "compaction: %s indexes %d -> %d bytes (%d saved) in %.1f s",
            day.table,
            before,
            after,
            compacted.bytes_saved,
            compacted.seconds,
        )
    return done


async def _index_bytes(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    cur = await conn.execute(INDEX_BYTES, (table,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0
