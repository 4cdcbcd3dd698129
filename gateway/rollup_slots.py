"""The parts kept inside rollup rows, as SQL fragments for whoever writes those rows (the
gateway's writer, gateway/write_statements.py, and the rebuild from history,
gateway/rollup_rebuild.py); schema.sql declares the columns.

- the 10-minute slots of the hourly rollups (slotK_mwh, slotK_readings: minutes 10K to 10K + 9
  of the hour);
- the hours of the daily rollups (hourK_mwh, hourK_readings: hour K of the UTC day).
"""

from __future__ import annotations

from typing import Final

SLOTS: Final = range(6)
HOURS: Final = range(24)
# The slot of a reading: from its epoch seconds, so that no session time zone (some are offset
# by 30 or 45 minutes) changes which 10 minutes of the UTC hour it falls in. date_part gives a
# double (exact to the microsecond for these dates); extract() a numeric, several times slower.
SLOT_OF_TS: Final = "mod(floor(date_part('epoch', ts))::bigint, 3600) / 600"
# The hour of the UTC day of an hourly row, likewise.
HOUR_OF_DAY: Final = "mod(floor(date_part('epoch', hour))::bigint, 86400) / 3600"


def part_columns(part: str, parts: range) -> str:
    """Energies, then readings: the order of CREATE TABLE."""
    return ", ".join([f"{part}{k}_mwh" for k in parts] + [f"{part}{k}_readings" for k in parts])


def slot_columns() -> str:
    return part_columns("slot", SLOTS)


def hour_columns() -> str:
    return part_columns("hour", HOURS)


def slot_sums(energy: str) -> str:
    """Aggregates over raw rows that carry a ``slot`` column, in the order and with the names
    of slot_columns()."""
    return ", ".join(
        [f"coalesce(sum({energy}) FILTER (WHERE slot = {k}), 0) AS slot{k}_mwh" for k in SLOTS]
        + [f"count(*) FILTER (WHERE slot = {k}) AS slot{k}_readings" for k in SLOTS]
    )


def part_pivot(part: str, parts: range, energy: str = "energy", key: str = "") -> str:
    """Part columns from rows already summed by part, one row per part (columns ``key``, by
    default named as the part, ``energy`` and readings), in the order and with the names of
    part_columns(). With one row per part, max() is that row's value: a plain comparison
    where sum() keeps a 128-bit state per part (48 of them per daily row)."""
    key = key or part
    return ", ".join(
        [f"coalesce(max({energy}) FILTER (WHERE {key} = {k}), 0) AS {part}{k}_mwh" for k in parts]
        + [
            f"coalesce(max(readings) FILTER (WHERE {key} = {k}), 0) AS {part}{k}_readings"
            for k in parts
        ]
    )


def slot_pivot() -> str:
    return part_pivot("slot", SLOTS)


def additions(alias: str, columns: str) -> str:
    """ON CONFLICT assignments that add the new row's ``columns`` to the stored row ``alias``."""
    return ", ".join(
        f"{column} = {alias}.{column} + EXCLUDED.{column}" for column in columns.split(", ")
    )
