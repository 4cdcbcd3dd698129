"""The gateway's write-side SQL: per reading kind, generated from gateway/reading_kinds.py (the
staging table, its binary COPY, the history statement with its rollups, the live-row update),
and the dead-letter statements."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from gateway.reading_kinds import KINDS, Column, Measure, ReadingKind
from gateway.readings import DeviceKind
from gateway.rollup_slots import (
    HOUR_OF_DAY,
    HOURS,
    SLOT_OF_TS,
    additions,
    hour_columns,
    part_pivot,
    slot_columns,
    slot_pivot,
)

# Hours and days start at UTC midnight, whatever the session's time zone.
ORIGIN: Final = "'2000-01-01 00:00:00+00'"


def names(columns: tuple[Column, ...]) -> str:
    return ", ".join(column.name for column in columns)


def measure_columns(kind: ReadingKind[Any]) -> str:
    """The hourly rollup's measure columns, each preceded by ', ' (none: '')."""
    return "".join(f", {measure.name}" for measure in kind.measures)


def measures_of_rows(kind: ReadingKind[Any]) -> str:
    """The measures over history rows, each preceded by ', ', as the hourly rollup keeps them."""
    return "".join(f", {_of_rows(kind, measure)} AS {measure.name}" for measure in kind.measures)


def _of_rows(kind: ReadingKind[Any], measure: Measure) -> str:
    value = measure.of
    if kind.type_of(value) != measure.type:  # a sum of reals, summed as a double
        value = f"{value}::{measure.type}"
    return f"{measure.aggregate}({value})"


def _stage_ddl(kind: ReadingKind[Any]) -> str:
    columns = ", ".join(f"{column.name} {column.type}" for column in kind.staged)
    return f"CREATE TEMP TABLE IF NOT EXISTS {kind.stage} ({columns}) ON COMMIT DELETE ROWS;"


# Per-connection staging tables for binary COPY, made by the pool's configure callback.
# ON COMMIT DELETE ROWS empties them at each commit, so they never grow (temporary tables are
# never autovacuumed).
STAGING_DDL: Final = "\n".join(_stage_ddl(kind) for kind in KINDS.values())

# In these, {a} is the device table's alias: its initial (m, v).
# New devices only: ON CONFLICT alone would draw an identity value for every staged row.
_REGISTER: Final = """
INSERT INTO {kind} (name)
SELECT DISTINCT s.name FROM {stage} s
WHERE NOT EXISTS (SELECT 1 FROM {kind} {a} WHERE {a}.name = s.name)
ON CONFLICT (name) DO NOTHING
"""
# History and its rollups (hourly with 10-minute slots, daily with each hour's sums) in one
# statement: the rollups add up only the rows that were really inserted, so a duplicate never
# counts twice. Rows are taken in key order so that two gateways updating the same rollup rows
# lock them in the same order (no deadlock).
_HISTORY_AND_ROLLUPS: Final = """
WITH inserted AS (
    INSERT INTO {history} ({history_columns})
    SELECT {history_values}
    FROM {stage} s JOIN {kind} {a} ON {a}.name = s.name
    ON CONFLICT DO NOTHING
    RETURNING {device}, ts, {energy}{measured}
), slots AS (
    -- by slot first: an array of readings gives a few slots, and the pivot below reads those
    SELECT {device}, date_bin('1 hour', ts, {origin}) AS hour,
           {slot_of_ts} AS slot, sum({energy})::bigint AS energy, count(*)::int AS readings
           {slot_measures}
    FROM inserted GROUP BY 1, 2, 3
), hours AS (
    SELECT {device}, hour, sum(energy)::bigint AS {energy}, sum(readings)::int AS readings
           {hour_measures}, {slot_pivot}
    FROM slots GROUP BY 1, 2
), rolled AS (
    INSERT INTO {kind}_hourly AS h ({device}, hour, {energy}, readings{measure_columns},
                                    {slot_columns})
    SELECT * FROM hours ORDER BY 1, 2
    ON CONFLICT ({device}, hour) DO UPDATE SET
        {energy} = h.{energy} + EXCLUDED.{energy},
        readings = h.readings + EXCLUDED.readings,
        {measure_updates}{slot_additions}
), rolled_daily AS (
    -- each hour's sums from the hour groups above
    INSERT INTO {kind}_daily AS d ({device}, day, {energy}, readings, {hour_columns})
    SELECT {device}, date_bin('1 day', hour, {origin}) AS day,
           sum({energy})::bigint, sum(readings)::int, {hour_pivot}
    FROM (SELECT {device}, hour, {energy}, readings, {hour_of_day} AS hour_of_day FROM hours) h
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT ({device}, day) DO UPDATE SET
        {energy} = d.{energy} + EXCLUDED.{energy},
        readings = d.readings + EXCLUDED.readings,
        {hour_additions}
)
SELECT count(*) FROM inserted
"""
_COMBINE: Final = {
    "sum": "{0} = h.{0} + EXCLUDED.{0}",
    "min": "{0} = least(h.{0}, EXCLUDED.{0})",
    "max": "{0} = greatest(h.{0}, EXCLUDED.{0})",
}
# The latest staged reading per device replaces the live one only if it is newer: readings
# that arrive late after an outage go to history but never turn the live state back.
_UPDATE_LIVE: Final = """
UPDATE {kind} {a}
SET {assignments}
FROM (SELECT DISTINCT ON (name) * FROM {stage} ORDER BY name, ts DESC) s
WHERE {a}.name = s.name AND ({a}.ts IS NULL OR {a}.ts < s.ts)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class KindStatements:
    """What writing one kind of reading takes, in order."""

    copy: str
    types: list[str]
    register: str  # open enrolment only
    insert_history: str  # returns the number of readings inserted
    update_live: str


def _history_and_rollups(kind: ReadingKind[Any]) -> str:
    measured = dict.fromkeys(measure.of for measure in kind.measures)  # once each, in order
    history_values = ", ".join(
        f"{kind.kind[0]}.{column.name}" if column.name == kind.device_id else f"s.{column.name}"
        for column in kind.history_columns
    )
    return _HISTORY_AND_ROLLUPS.format(
        kind=kind.kind,
        a=kind.kind[0],
        history=kind.history,
        stage=kind.stage,
        device=kind.device_id,
        energy=kind.energy.name,
        origin=ORIGIN,
        history_columns=names(kind.history_columns),
        history_values=history_values,
        measured="".join(f", {column}" for column in measured),
        slot_of_ts=SLOT_OF_TS,
        slot_measures=measures_of_rows(kind),
        hour_measures="".join(
            f", {measure.aggregate}({measure.name}) AS {measure.name}" for measure in kind.measures
        ),
        slot_pivot=slot_pivot(),
        measure_columns=measure_columns(kind),
        slot_columns=slot_columns(),
        measure_updates="".join(
            _COMBINE[measure.aggregate].format(measure.name) + ",\n        "
            for measure in kind.measures
        ),
        slot_additions=additions("h", slot_columns()),
        hour_columns=hour_columns(),
        hour_pivot=part_pivot("hour", HOURS, kind.energy.name, key="hour_of_day"),
        hour_of_day=HOUR_OF_DAY,
        hour_additions=additions("d", hour_columns()),
    )


def _statements(kind: ReadingKind[Any]) -> KindStatements:
    return KindStatements(
        copy=f"COPY {kind.stage} ({names(kind.staged)}) FROM STDIN (FORMAT BINARY)",
        types=[column.type for column in kind.staged],
        register=_REGISTER.format(kind=kind.kind, a=kind.kind[0], stage=kind.stage),
        insert_history=_history_and_rollups(kind),
        update_live=_UPDATE_LIVE.format(
            kind=kind.kind,
            a=kind.kind[0],
            stage=kind.stage,
            assignments=", ".join(f"{c.name} = s.{c.name}" for c in kind.live),
        ),
    )


STATEMENTS: Final[dict[DeviceKind, KindStatements]] = {
    name: _statements(kind) for name, kind in KINDS.items()
}

COPY_DEAD_LETTERS: Final = (
    "COPY dead_letter (received_at, topic, device_kind, device_name, reason, payload,"
    " payload_bytes) FROM STDIN (FORMAT BINARY)"
)
DEAD_LETTER_TYPES: Final = ["timestamptz", "text", "text", "text", "text", "bytea", "int4"]
# One row per device and minute: the first batch inserts it with its sample, later ones add.
COUNT_OVERFLOW: Final = b"""
INSERT INTO dead_letter_overflow AS o (window_start, device_kind, device_name, dead_letters,
    last_received_at, sample_reason, sample_payload, sample_bytes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_kind, device_name, window_start) DO UPDATE SET
    dead_letters = o.dead_letters + EXCLUDED.dead_letters,
    last_received_at = greatest(o.last_received_at, EXCLUDED.last_received_at)
"""
