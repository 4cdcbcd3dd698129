"""Rollups rebuilt from history for a range of time: every hourly row (with its 10-minute slots)
and daily row (with its hours) that the range touches, deleted and computed again from the
history rows, in one transaction. The operator's repair (``python -m gateway rebuild-rollups``)
and the API benchmark's generator; the gateway keeps rollups batch by batch
(gateway/write_statements.py), from the same declarations (gateway/reading_kinds.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from gateway.reading_kinds import KINDS, ReadingKind
from gateway.readings import DeviceKind
from gateway.rollup_slots import (
    HOUR_OF_DAY,
    HOURS,
    SLOT_OF_TS,
    hour_columns,
    part_pivot,
    slot_columns,
    slot_sums,
)
from gateway.write_statements import ORIGIN, measure_columns, measures_of_rows

_HOUR: Final = timedelta(hours=1)
_DAY: Final = timedelta(days=1)

# The range's hours, from history. Rows are stored in time order, as the gateway writes them
# over time: an hour's rows lie on neighbouring pages.
_HOURLY: Final = """
INSERT INTO {kind}_hourly ({device}, hour, {energy}, readings{measure_columns}, {slot_columns})
SELECT {device}, date_bin('1 hour', ts, {origin}), sum({energy})::bigint, count(*)::int
       {measures}, {slot_sums}
FROM (SELECT *, {slot_of_ts} AS slot FROM {history}
      WHERE ts >= %(hours_from)s AND ts < %(hours_to)s) r
GROUP BY 1, 2 ORDER BY 2, 1
"""
# The range's days, from the hourly rows just rebuilt (one per device and hour, so each hour
# column is that row's sums) and, for the hours of its first and last day outside the range,
# from history: a day is always its history's, whatever the hourly rows outside the range hold.
_DAILY: Final = """
INSERT INTO {kind}_daily ({device}, day, {energy}, readings, {hour_columns})
SELECT {device}, date_bin('1 day', hour, {origin}), sum({energy})::bigint, sum(readings)::int,
       {hour_pivot}
FROM (
    SELECT *, {hour_of_day} AS hour_of_day
    FROM (
        SELECT {device}, hour, {energy}, readings FROM {kind}_hourly
        WHERE hour >= %(hours_from)s AND hour < %(hours_to)s
        UNION ALL
        SELECT {device}, date_bin('1 hour', ts, {origin}), sum({energy})::bigint, count(*)::int
        FROM {history}
        WHERE ts >= %(days_from)s AND ts < %(hours_from)s
           OR ts >= %(hours_to)s AND ts < %(days_to)s
        GROUP BY 1, 2
    ) hours
) h
GROUP BY 1, 2 ORDER BY 2, 1
"""
_DELETE_HOURLY: Final = (
    "DELETE FROM {kind}_hourly WHERE hour >= %(hours_from)s AND hour < %(hours_to)s"
)
_DELETE_DAILY: Final = "DELETE FROM {kind}_daily WHERE day >= %(days_from)s AND day < %(days_to)s"
# A gateway's write of the same kind waits until the commit (it would add a batch to rows being
# rebuilt); readers do not. Two rebuilds take turns. Meters first, as the gateway writes.
_LOCK: Final = "LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE"


@dataclasses.dataclass(frozen=True, slots=True)
class _Statements:
    delete_hourly: bytes
    hourly: bytes
    delete_daily: bytes
    daily: bytes


def _statements(kind: ReadingKind[Any]) -> _Statements:
    names = {
        "kind": kind.kind,
        "device": kind.device_id,
        "energy": kind.energy.name,
        "history": kind.history,
        "origin": ORIGIN,
    }
    hourly = _HOURLY.format(
        **names,
        measure_columns=measure_columns(kind),
        slot_columns=slot_columns(),
        measures=measures_of_rows(kind),
        slot_sums=slot_sums(kind.energy.name),
        slot_of_ts=SLOT_OF_TS,
    )
    daily = _DAILY.format(
        **names,
        hour_columns=hour_columns(),
        hour_pivot=part_pivot("hour", HOURS, kind.energy.name, key="hour_of_day"),
        hour_of_day=HOUR_OF_DAY,
    )
    return _Statements(
        _DELETE_HOURLY.format(**names).encode(),
        hourly.encode(),
        _DELETE_DAILY.format(**names).encode(),
        daily.encode(),
    )


_STATEMENTS: Final = {name: _statements(kind) for name, kind in KINDS.items()}


class RollupRightsError(psycopg.errors.InsufficientPrivilege):
    """This login may not rewrite rollups (a service's role): the schema's owner rebuilds them."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild wrote for one kind: the span it covered (whole hours, and whole days for
    the daily rows) and the rows it wrote."""

    kind: DeviceKind
    hours_from: datetime
    hours_to: datetime
    days_from: datetime
    days_to: datetime
    hourly_rows: int
    daily_rows: int


async def rebuild_rollups(
    conn: psycopg.AsyncConnection[Any],
    start: datetime,
    end: datetime,
    kinds: Sequence[DeviceKind] = tuple(KINDS),
) -> list[Rebuilt]:
    """Delete and recompute, from history, the rollups of every device for the hours that
    [``start``, ``end``) touches and for the days it touches (a day from all its history, also
    where the range begins or ends within it); rollups outside those hours and days are not
    touched. One transaction (a savepoint if ``conn`` is in one); rebuilding again changes
    nothing. A gateway writing the same kinds waits for it. It deletes rows, which only the
    schema's owner may: another login gets ``RollupRightsError``."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("the range needs times with a time zone")
    if end <= start:
        raise ValueError(f"the range is empty: {start.isoformat()} is not before {end.isoformat()}")
    hours_from, hours_to = _floor(start, _HOUR), _ceil(end, _HOUR)
    days_from, days_to = _floor(start, _DAY), _ceil(end, _DAY)
    span = {
        "hours_from": hours_from,
        "hours_to": hours_to,
        "days_from": days_from,
        "days_to": days_to,
    }
    ordered = [name for name in KINDS if name in kinds]
    tables = ", ".join(f"{name}_hourly, {name}_daily" for name in ordered)
    rebuilt = []
    try:
        async with conn.transaction():
            await conn.execute(_LOCK.format(tables=tables).encode())
            for name in ordered:
                statements = _STATEMENTS[name]
                cur = conn.cursor()
                await cur.execute(statements.delete_hourly, span)
                await cur.execute(statements.hourly, span)
                hourly_rows = cur.rowcount
                await cur.execute(statements.delete_daily, span)
                await cur.execute(statements.daily, span)
                rebuilt.append(
                    Rebuilt(
                        name, hours_from, hours_to, days_from, days_to, hourly_rows, cur.rowcount
                    )
                )
    except psycopg.errors.InsufficientPrivilege as exc:
        reason = exc.diag.message_primary or " ".join(str(exc).split())
        raise RollupRightsError(
            f"{conn.info.user!r} may not rebuild rollups ({reason}): run it with the"
            " DATABASE_URL of the schema's owner (a member of fleetgate_owner) or of a superuser"
            " (docs/security.md)"
        ) from exc
    return rebuilt


def _floor(at: datetime, unit: timedelta) -> datetime:
    """The start of the UTC hour or day that holds ``at``."""
    utc = at.astimezone(UTC)
    if unit == _DAY:
        return utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return utc.replace(minute=0, second=0, microsecond=0)


def _ceil(at: datetime, unit: timedelta) -> datetime:
    floor = _floor(at, unit)
    return floor if floor == at else floor + unit
