"""The 10-minute slots of the hourly rollups (slotK_mwh, slotK_readings: minutes 10K to 10K + 9
of the hour), as SQL fragments for whoever writes those rows: the gateway's writer and the API
benchmark's generator. schema.sql declares the columns."""

from __future__ import annotations

from typing import Final

SLOTS: Final = range(6)
# The slot of a reading: from its epoch seconds, so that no session time zone (some are offset
# by 30 or 45 minutes) changes which 10 minutes of the UTC hour it falls in. date_part gives a
# double (exact to the microsecond for these dates); extract() a numeric, several times slower.
SLOT_OF_TS: Final = "mod(floor(date_part('epoch', ts))::bigint, 3600) / 600"


def slot_columns() -> str:
    return ", ".join([f"slot{k}_mwh" for k in SLOTS] + [f"slot{k}_readings" for k in SLOTS])


def slot_sums(energy: str) -> str:
    """Aggregates over rows that carry a ``slot`` column, in the order and with the names of
    slot_columns()."""
    return ", ".join(
        [f"coalesce(sum({energy}) FILTER (WHERE slot = {k}), 0) AS slot{k}_mwh" for k in SLOTS]
        + [f"count(*) FILTER (WHERE slot = {k}) AS slot{k}_readings" for k in SLOTS]
    )


def slot_pivot() -> str:
    """Slot columns from rows already summed by slot (columns slot, energy and readings), one
    row per slot, in the order and with the names of slot_columns()."""
    return ", ".join(
        [f"coalesce(sum(energy) FILTER (WHERE slot = {k}), 0) AS slot{k}_mwh" for k in SLOTS]
        + [
            f"coalesce(sum(readings) FILTER (WHERE slot = {k}), 0) AS slot{k}_readings"
            for k in SLOTS
        ]
    )


def slot_additions(alias: str) -> str:
    """ON CONFLICT assignments that add the new rows' slots to the stored row ``alias``."""
    return ", ".join(
        f"{column} = {alias}.{column} + EXCLUDED.{column}" for column in slot_columns().split(", ")
    )
