"""The daily partitions of the history tables: made ahead of time, and on demand for the days a
batch needs, through fleetgate_ensure_partition (which runs as the tables' owner); the retention
horizon, before which a day's partition was dropped, so that a reading for it is a dead letter
instead of a new partition; and the partitions that exist, with their sizes."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.batch import Batch, Received
from gateway.lifecycle_statements import ENSURE_PARTITION, HISTORY_DAYS, HORIZONS
from gateway.reading_kinds import KINDS
from gateway.readings import DeviceKind, Reject

logger = logging.getLogger(__name__)

HISTORY_TABLES: Final[dict[str, str]] = {name: kind.history for name, kind in KINDS.items()}
# The name fleetgate_ensure_partition gives a day's partition.
_PARTITION_NAME: Final = re.compile(r"\A(meter|vehicle)_reading_(\d{8})\Z")


class Partitions:
    """Creates daily history partitions ahead of time, and on demand for the days a batch needs;
    knows the retention horizon of each kind, read again whenever a day is new to it."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._known: set[tuple[str, date]] = set()
        self._kept_from: dict[str, date] = {}  # by kind: the days before were dropped

    async def prepare(self, batch: Batch) -> Batch:
        """The batch as it can be written: the partitions of its days made, and its readings of
        days past retention turned into dead letters (a cheap check: a look-up per day)."""
        days = batch.reading_days()
        await self.ensure(days)
        if not any(day < self._kept_from.get(kind, date.min) for kind, day in days):
            return batch
        return dataclasses.replace(
            batch, messages=[self._past_retention(message) for message in batch.messages]
        )

    async def ensure(self, days: set[tuple[str, date]]) -> None:
        missing = days - self._known
        if not missing:
            return
        made = []
        async with self._pool.connection() as conn:
            await self._read_horizons(conn)
            for kind, day in sorted(missing):
                if day < self._kept_from.get(kind, date.min):
                    continue
                cur = await conn.execute(ENSURE_PARTITION, (HISTORY_TABLES[kind], day))
                kept = await cur.fetchone()
                await conn.commit()  # one short lock per partition
                if kept and kept[0]:
                    self._known.add((kind, day))
                    made.append((kind, day))
                else:  # dropped since the horizon was read
                    await self._read_horizons(conn)
        if made:
            logger.info(
                "history partitions ready: %s", ", ".join(f"{k} {d}" for k, d in sorted(made))
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

    async def _read_horizons(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(HORIZONS)
        self._kept_from = {kind: kept_from for kind, kept_from in await cur.fetchall()}
        await conn.commit()

    def _past_retention(self, message: Received) -> Received:
        """The message with its readings of days before the horizon turned into one dead
        letter, which names the days; its other readings are kept."""
        decoded = message.decoded
        kind = decoded.device_kind
        if kind is None or not decoded.readings:
            return message
        kept_from = self._kept_from.get(kind, date.min)
        kept = []
        past = []
        for reading in decoded.readings:
            day = reading.timestamp.astimezone(UTC).date()
            if day < kept_from:
                past.append(day)
            else:
                kept.append(reading)
        if not past:
            return message
        reject = Reject(
            past_retention_reason(past, len(decoded.readings), kept_from),
            message.payload,
            len(message.payload),
            kind,
            decoded.device_id,
        )
        changed = decoded._replace(readings=kept, rejects=[*decoded.rejects, reject])
        return message._replace(decoded=changed)


def past_retention_reason(days: Iterable[date], readings: int, kept_from: date) -> str:
    """The dead letter's reason for a message with readings of days already dropped."""
    past = sorted(days)
    first, last = past[0], past[-1]
    span = f"day {first}" if first == last else f"days {first} to {last}"
    kept = f"(history is kept from {kept_from})"
    if readings == 1:
        return f"its day {first} is past retention {kept}"
    if len(past) == readings:
        return f"its {readings} readings are past retention: {span} {kept}"
    return (
        f"{len(past)} of its {readings} readings are past retention: {span} {kept};"
        " the others were stored"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryDay:
    """One daily partition of a history table, as the catalogs describe it."""

    kind: DeviceKind
    day: date
    table: str
    total_bytes: int  # table, indexes and TOAST
    table_bytes: int
    index_bytes: int
    rows_estimate: int | None  # pg_class.reltuples: None until the first VACUUM or ANALYZE

    @property
    def has_rows(self) -> bool:
        return self.table_bytes > 0


async def history_days(conn: psycopg.AsyncConnection[Any]) -> list[HistoryDay]:
    """Every daily partition of the history tables, oldest first, meters before vehicles.
    Partitions named otherwise (made by hand) are not fleetgate's to manage: left out."""
    found = []
    for kind, table in HISTORY_TABLES.items():
        cur = await conn.execute(HISTORY_DAYS, (table,))
        for name, total, heap, indexes, reltuples in await cur.fetchall():
            match = _PARTITION_NAME.match(name)
            if match is None or match[1] != kind:
                continue
            day = date.fromisoformat(match[2])  # YYYYMMDD
            found.append(
                HistoryDay(
                    "meter" if kind == "meter" else "vehicle",
                    day,
                    name,
                    total,
                    heap,
                    indexes,
                    None if reltuples < 0 else reltuples,
                )
            )
    return sorted(found, key=lambda d: (d.day, d.kind))
