"""The gateway's write-side SQL: per reading kind, generated from gateway/reading_kinds.py (the
staging table, its binary COPY, the history statement with its rollups, the live-row update),
and the dead-letter statements."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from gateway.reading_kinds import KINDS, Column, Measure, ReadingKind
from gateway.readings import DeviceKind
from gateway.rollup_levels import LEVELS, RollupLevel

# Hours and days start at UTC midnight, whatever the session's time zone.
ORIGIN: Final = "'2000-01-01 00:00:00+00'"


def names(columns: tuple[Column, ...]) -> str:
    return ", ".join(column.name for column in columns)


def sums_of_history(kind: ReadingKind[Any], level: RollupLevel) -> str:
    """What ``level`` keeps, summed over history rows (or the rows just inserted): the energy,
    the count and the measures, named as the level's columns."""
    measures = "".join(f", {_of_history(kind, m)} AS {m.name}" for m in level.measures(kind))
    energy = kind.energy.name
    return f"sum({energy})::bigint AS {energy}, count(*)::int AS readings{measures}"


def sums_of_level(kind: ReadingKind[Any], level: RollupLevel) -> str:
    """What ``level`` keeps, summed over the rows of the level before it."""
    measures = "".join(f", {m.aggregate}({m.name}) AS {m.name}" for m in level.measures(kind))
    return (
        f"sum({kind.energy.name})::bigint AS {kind.energy.name},"
        f" sum(readings)::int AS readings{measures}"
    )


def _of_history(kind: ReadingKind[Any], measure: Measure) -> str:
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
# History and its rollups in one statement: the rollups add up only the rows that were really
# inserted, so a duplicate never counts twice. The first level sums the inserted rows, each next
# level the groups of the one before (an array of readings gives a few hours, and a day sums
# those). Rows are taken in key order so that two gateways updating the same rollup rows lock
# them in the same order (no deadlock).
_HISTORY_AND_ROLLUPS: Final = """
WITH inserted AS (
    INSERT INTO {history} ({history_columns})
    SELECT {history_values}
    FROM {stage} s JOIN {kind} {a} ON {a}.name = s.name{on_conflict}
    RETURNING {device}, ts, {energy}{measured}
){levels}
SELECT count(*) FROM inserted
"""
# One level: its rows from the rows below (``source``: the inserted history rows, or the groups
# of the level before), then added to its table.
_LEVEL: Final = """, {level}_sums AS (
    SELECT {device}, date_bin({interval}, {source_key}, {origin}) AS {key},
           {sums}
    FROM {source} GROUP BY 1, 2
), {level}_written AS (
    INSERT INTO {table} AS r ({columns})
    SELECT * FROM {level}_sums ORDER BY 1, 2
    ON CONFLICT ({device}, {key}) DO UPDATE SET
        {updates}
)"""
# How a stored rollup row ``r`` takes in the sums of new readings.
_COMBINE: Final = {
    "sum": "{0} = r.{0} + EXCLUDED.{0}",
    "min": "{0} = least(r.{0}, EXCLUDED.{0})",
    "max": "{0} = greatest(r.{0}, EXCLUDED.{0})",
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
    insert_new: str  # the same, failing on a reading already stored (cheaper: no ON CONFLICT)
    update_live: str


def _level(kind: ReadingKind[Any], level: RollupLevel, below: RollupLevel | None) -> str:
    combined = [
        _COMBINE["sum"].format(kind.energy.name),
        _COMBINE["sum"].format("readings"),
        *(_COMBINE[m.aggregate].format(m.name) for m in level.measures(kind)),
    ]
    return _LEVEL.format(
        level=level.name,
        table=level.table(kind),
        device=kind.device_id,
        key=level.key,
        interval=level.interval,
        origin=ORIGIN,
        source="inserted" if below is None else f"{below.name}_sums",
        source_key="ts" if below is None else below.key,
        sums=sums_of_history(kind, level) if below is None else sums_of_level(kind, level),
        columns=names(level.columns(kind)),
        updates=",\n        ".join(combined),
    )


def history_and_rollups(
    kind: ReadingKind[Any], levels: tuple[RollupLevel, ...] = LEVELS, *, skip_stored: bool = True
) -> str:
    """The statement that stores the staged readings of ``kind`` in history and adds the rows
    really inserted to the rollups of ``levels``; it returns the number inserted. A reading
    already stored is skipped, or with ``skip_stored=False`` fails the statement."""
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
        history_columns=names(kind.history_columns),
        history_values=history_values,
        on_conflict="\n    ON CONFLICT DO NOTHING" if skip_stored else "",
        measured="".join(f", {column}" for column in measured),
        levels="".join(
            _level(kind, level, levels[n - 1] if n else None) for n, level in enumerate(levels)
        ),
    )


def _statements(kind: ReadingKind[Any]) -> KindStatements:
    return KindStatements(
        copy=f"COPY {kind.stage} ({names(kind.staged)}) FROM STDIN (FORMAT BINARY)",
        types=[column.type for column in kind.staged],
        register=_REGISTER.format(kind=kind.kind, a=kind.kind[0], stage=kind.stage),
        insert_history=history_and_rollups(kind),
        insert_new=history_and_rollups(kind, skip_stored=False),
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
