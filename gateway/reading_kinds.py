"""What a meter's and a vehicle's reading are in the database, declared once: the columns a
reading is stored in, their PostgreSQL types, the row built from a decoded reading and what the
rollups keep of it (the levels: gateway/rollup_levels.py). The staging tables, binary COPY,
history, live-row and rollup statements are generated from these (gateway/write_statements.py,
gateway/rollup_rebuild.py); schema.sql writes the same columns out as plain DDL, and
tests/integration/test_reading_kinds.py checks that the two agree on a new database."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from gateway.readings import DeviceKind, MeterReading, Reading, VehicleReading

MWH_PER_KWH: Final = 1_000_000


def to_mwh(kwh: float) -> int:
    """Energy as stored: whole milliwatt-hours, so that every sum is exact."""
    return round(kwh * MWH_PER_KWH)


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # as PostgreSQL names it; binary COPY sends the value as this type


@dataclasses.dataclass(frozen=True, slots=True)
class Measure:
    """A rollup column that keeps one history column's sum, least or greatest value (besides
    the energy and the count, which every rollup keeps), in the levels that keep measures."""

    name: str
    aggregate: Literal["sum", "min", "max"]
    of: str  # the history column
    type: str


R = TypeVar("R", bound=Reading)
# The staged row: device name, ts, energy, the kind's other values, received_at.
MeterRow: TypeAlias = tuple[str, datetime, int, float, datetime]
VehicleRow: TypeAlias = tuple[str, datetime, int, float, float, datetime]

_NAME: Final = Column("name", "text")
_TS: Final = Column("ts", "timestamptz")
_RECEIVED_AT: Final = Column("received_at", "timestamptz")


@dataclasses.dataclass(frozen=True, slots=True)
class ReadingKind(Generic[R]):
    """One kind of reading: its tables are named after it (``{kind}``, ``{kind}_reading``,
    the staging table ``{kind}_stage``, and a table per rollup level, ``{kind}_hourly``)."""

    kind: DeviceKind
    energy: Column  # in mWh: history, live row, every rollup level
    values: tuple[Column, ...]  # the reading's other values, as history and the live row keep them
    measures: tuple[Measure, ...]  # what the rollup levels that keep measures keep of them
    # (name, reading, received_at) -> the staged row, in the order of ``staged``
    row: Callable[[str, R, datetime], tuple[Any, ...]]

    @property
    def device_id(self) -> str:
        """The registry's integer id, which history and rollups store instead of the name."""
        return f"{self.kind}_id"

    @property
    def history(self) -> str:
        return f"{self.kind}_reading"

    @property
    def stage(self) -> str:
        return f"{self.kind}_stage"

    @property
    def staged(self) -> tuple[Column, ...]:
        """The staging table's columns: what binary COPY sends, in the order of ``row``."""
        return (_NAME, _TS, self.energy, *self.values, _RECEIVED_AT)

    @property
    def history_columns(self) -> tuple[Column, ...]:
        """The history table's columns, in the order of schema.sql (widest first)."""
        return (_TS, self.energy, Column(self.device_id, "integer"), *self.values)

    @property
    def live(self) -> tuple[Column, ...]:
        """The device row's columns that its latest reading sets."""
        return (_TS, _RECEIVED_AT, self.energy, *self.values)

    def type_of(self, column: str) -> str:
        return next(c.type for c in self.history_columns if c.name == column)


def _meter_row(name: str, reading: MeterReading, received_at: datetime) -> MeterRow:
    return name, reading.timestamp, to_mwh(reading.kwh_consumed_ac), reading.voltage, received_at


def _vehicle_row(name: str, reading: VehicleReading, received_at: datetime) -> VehicleRow:
    return (
        name,
        reading.timestamp,
        to_mwh(reading.kwh_delivered_dc),
        reading.soc,
        reading.battery_temp,
        received_at,
    )


METER: Final = ReadingKind(
    kind="meter",
    energy=Column("consumed_ac_mwh", "bigint"),  # AC energy billed since the previous reading
    values=(Column("voltage", "real"),),
    measures=(
        Measure("voltage_min", "min", "voltage", "real"),
        Measure("voltage_max", "max", "voltage", "real"),
    ),
    row=_meter_row,
)
VEHICLE: Final = ReadingKind(
    kind="vehicle",
    energy=Column("delivered_dc_mwh", "bigint"),  # DC energy into the battery since then
    values=(Column("soc", "real"), Column("battery_temp", "real")),
    measures=(
        # summed in double precision: a span's mean temperature is its sum over its readings
        Measure("battery_temp_sum", "sum", "battery_temp", "double precision"),
        Measure("battery_temp_min", "min", "battery_temp", "real"),
        Measure("battery_temp_max", "max", "battery_temp", "real"),
    ),
    row=_vehicle_row,
)
# Meters first: every writer takes the two kinds' locks in this order (no deadlock).
KINDS: Final[dict[DeviceKind, ReadingKind[Any]]] = {"meter": METER, "vehicle": VEHICLE}
