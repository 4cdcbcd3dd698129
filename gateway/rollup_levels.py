"""The rollup levels, declared once: each level's name (its tables are ``{kind}_{name}``), the
span one row sums (its unit), its columns, and which of a reading kind's measures it keeps. The
writer (gateway/write_statements.py), the rebuild from history (gateway/rollup_rebuild.py) and
the fleet view's reader (http_api/window_pieces.py, http_api/fleet_queries.py) are generated
from it; schema.sql writes the same tables out as plain DDL, and
tests/integration/test_reading_kinds.py checks that the two agree on a new database.

Adding a rollup column (a new measure of a kind): the measure in gateway/reading_kinds.py, the
column in schema.sql and in a new migration. Adding a level: a RollupLevel here, its tables in
schema.sql and a migration (and grants, docs/schema.md)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from gateway.reading_kinds import Column, Measure, ReadingKind

READINGS: Final = Column("readings", "integer")  # every rollup row counts its readings
# Hours and days start at UTC midnight, whatever the session's time zone: the origin of every
# date_bin (gateway/write_statements.ORIGIN).
ORIGIN: Final = datetime(2000, 1, 1, tzinfo=UTC)


def floor_to(moment: datetime, unit: timedelta) -> datetime:
    """The start of the ``unit`` (an hour, a day: UTC) that holds ``moment``."""
    return ORIGIN + (moment - ORIGIN) // unit * unit


def ceil_to(moment: datetime, unit: timedelta) -> datetime:
    floor = floor_to(moment, unit)
    return floor if floor == moment else floor + unit


@dataclasses.dataclass(frozen=True, slots=True)
class RollupLevel:
    """Rows of sums per device and ``unit`` (UTC, from midnight): the energy, the count of
    readings and, if ``keeps_measures``, the kind's measures (gateway/reading_kinds.Measure)."""

    name: str  # the tables' suffix: meter_hourly, vehicle_hourly
    key: str  # the column that holds the start of a row's span
    unit: timedelta
    keeps_measures: bool

    @property
    def interval(self) -> str:
        """The unit as a PostgreSQL interval literal, for date_bin."""
        return f"interval '{int(self.unit.total_seconds())} seconds'"

    def table(self, kind: ReadingKind[Any]) -> str:
        return f"{kind.kind}_{self.name}"

    def keys(self, kind: ReadingKind[Any]) -> tuple[Column, Column]:
        """The primary key: the device and the start of the row's span."""
        return Column(kind.device_id, "integer"), Column(self.key, "timestamptz")

    def measures(self, kind: ReadingKind[Any]) -> tuple[Measure, ...]:
        return kind.measures if self.keeps_measures else ()

    def columns(self, kind: ReadingKind[Any]) -> tuple[Column, ...]:
        """Every column of the level's table, in the order of schema.sql."""
        measures = tuple(Column(m.name, m.type) for m in self.measures(kind))
        return (*self.keys(kind), kind.energy, READINGS, *measures)


# Why each level exists and what it costs the writer: docs/design.md#the-rollups.
HOURLY: Final = RollupLevel("hourly", "hour", timedelta(hours=1), keeps_measures=True)
DAILY: Final = RollupLevel("daily", "day", timedelta(days=1), keeps_measures=False)
# Finest first; each unit a whole number of the one before, and each level keeps no measure
# that the level before it does not (a level is summed from the one before).
LEVELS: Final = (HOURLY, DAILY)
