"""Synthetic fleet history for the API benchmark, generated with set-based SQL straight into the
daily history partitions, with the rollups of every level rebuilt from the very rows stored by
gateway/rollup_rebuild.py (so rollups and raw history agree exactly, as the gateway keeps
them)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, date, datetime, timedelta
from typing import Final

import psycopg

from gateway.database import apply_schema
from gateway.reading_kinds import KINDS
from gateway.readings import DeviceKind
from gateway.rollup_levels import LEVELS
from gateway.rollup_rebuild import rebuild_rollups


@dataclasses.dataclass(frozen=True, slots=True)
class Fleet:
    """What gets generated. Devices 1..few have ``long_days`` of history, the next ``few`` only
    one day, every other device ``days``; vehicle i is linked to meter i. Readings come every
    ``step_minutes`` over the last ``dense_days`` (every window the benchmark asks for lies
    there), every ``sparse_every`` steps before that, to keep generation within minutes."""

    devices: int
    days: int
    step_minutes: int = 1
    dense_days: int = 2
    sparse_every: int = 5
    long_days: int = 30
    few: int = 10
    now: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))

    @property
    def long_ids(self) -> range:
        return range(1, self.few + 1)

    @property
    def one_day_ids(self) -> range:
        return range(self.few + 1, 2 * self.few + 1)

    @property
    def origin(self) -> datetime:
        """Tick 0: the reading grid is aligned on whole minutes since UTC midnight."""
        start = self.now - timedelta(days=self.long_days)
        return start.replace(hour=0, minute=0, second=0, microsecond=0)


# Energy of one reading: about 7 kW while charging, nothing two hours in three; each vehicle's
# charger has its own efficiency (0.72-0.98), so the fleet view has every status.
_DC: Final = """CASE WHEN (k / %(ticks_per_hour)s + d) %% 3 = 0 THEN 0::bigint
     ELSE %(dc_per_tick)s::bigint * (90 + (d * 31 + k) %% 21) / 100 END"""
_SPAN: Final = """CASE WHEN d <= %(few)s THEN %(long)s::interval
     WHEN d <= 2 * %(few)s THEN interval '1 day' ELSE %(span)s::interval END"""
_GRID: Final = f"""
FROM generate_series(%(k0)s::int, %(k1)s::int) k, generate_series(1, %(d_to)s::int + 0 * k) d
WHERE %(origin)s::timestamptz + k * %(step)s::interval > %(now)s::timestamptz - {_SPAN}
  AND k %% %(every)s = 0
"""
# Readings are stored in arrival order, minute by minute (d depends on k, so k is the outer loop):
# a device's readings lie on different pages, as the gateway writes them.
_VEHICLE_DAY: Final = f"""
INSERT INTO vehicle_reading (ts, delivered_dc_mwh, vehicle_id, soc, battery_temp)
SELECT %(origin)s::timestamptz + k * %(step)s::interval, {_DC}, d,
       (20 + (d * 7 + k) %% 80)::real, (18 + ((d + k) %% 250) / 10.0)::real
{_GRID}
"""
_METER_DAY: Final = f"""
INSERT INTO meter_reading (ts, consumed_ac_mwh, meter_id, voltage)
SELECT %(origin)s::timestamptz + k * %(step)s::interval,
       20 + ({_DC}) * 100 / (72 + d %% 27), d, (228 + (d + k) %% 40 / 10.0)::real
{_GRID}
"""
_DEVICES: Final = (
    """
INSERT INTO vehicle (name, first_seen_at, ts, received_at, soc, delivered_dc_mwh, battery_temp)
SELECT format('V-%%s', lpad(d::text, 5, '0')), %(start)s, %(now)s, %(now)s, 50, 1000, 30
FROM generate_series(1, %(devices)s) d ORDER BY d""",
    """
INSERT INTO meter (name, first_seen_at, ts, received_at, consumed_ac_mwh, voltage)
SELECT format('M-%%s', lpad(d::text, 5, '0')), %(start)s, %(now)s, %(now)s, 1200, 230
FROM generate_series(1, %(devices)s) d ORDER BY d""",
)
# Every vehicle linked to its meter since before its history; one in ten moved off and back onto
# it five hours ago, so those have two linked segments inside the default window. Before that, a
# year of link history (one in ten vehicles re-linked a day, as now), which every request passes
# over.
_LINKS: Final = (
    """
INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from, valid_to)
SELECT d, d, %(start)s::timestamptz - (day + 1) * interval '1 day',
       %(start)s::timestamptz - day * interval '1 day' - interval '1 hour'
FROM generate_series(1, 365) day, generate_series(1 + day %% 10, %(devices)s, 10) d""",
    """
INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from, valid_to)
SELECT d, d, %(start)s, CASE WHEN d %% 10 = 0 THEN %(moved)s END
FROM generate_series(1, %(devices)s) d""",
    """
INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from)
SELECT d, d, %(moved)s::timestamptz + interval '17 minutes'
FROM generate_series(10, %(devices)s, 10) d""",
)


def _days(fleet: Fleet) -> list[date]:
    first = fleet.origin.date()
    return [first + timedelta(days=i) for i in range((fleet.now.date() - first).days + 1)]


async def _fill(url: str, kind: DeviceKind, fleet: Fleet) -> None:
    """History and rollups of one kind, day by day (one transaction per day)."""
    step = timedelta(minutes=fleet.step_minutes)
    per_day = 1440 // fleet.step_minutes
    last_tick = int((fleet.now - fleet.origin) / step)
    reading = _VEHICLE_DAY if kind == "vehicle" else _METER_DAY
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute("SET work_mem = '256MB'")
        for number, day in enumerate(_days(fleet)):
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            in_short_span = fleet.now - start <= timedelta(days=fleet.days + 1)
            dense = fleet.now - start <= timedelta(days=fleet.dense_days)
            params = {
                "origin": fleet.origin,
                "step": step,
                "now": fleet.now,
                "k0": number * per_day,
                "k1": min(last_tick, (number + 1) * per_day - 1),
                "d_to": fleet.devices if in_short_span else fleet.few,
                "few": fleet.few,
                "long": timedelta(days=fleet.long_days),
                "span": timedelta(days=fleet.days),
                "every": 1 if dense else fleet.sparse_every,
                "ticks_per_hour": 60 // fleet.step_minutes,
                "dc_per_tick": 116_667 * fleet.step_minutes,
            }
            await conn.execute(
                "SELECT fleetgate_ensure_partition(%s::regclass, %s)", (f"{kind}_reading", day)
            )
            await conn.execute(reading.encode(), params)
            await rebuild_rollups(conn, start, start + timedelta(days=1), (kind,))
            await conn.commit()


async def generate(url: str, fleet: Fleet) -> dict[str, float]:
    """Fill an empty database; returns seconds per phase and the rows stored."""
    await apply_schema(url)
    timings: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        start = fleet.origin - timedelta(days=1)
        params = {"start": start, "now": fleet.now, "devices": fleet.devices}
        moved = fleet.now - timedelta(hours=5, minutes=13)
        for sql in (*_DEVICES, *_LINKS):
            await conn.execute(sql.encode(), params | {"moved": moved})
    began = time.monotonic()
    async with asyncio.TaskGroup() as tasks:  # one core each
        for kind in KINDS:
            tasks.create_task(_fill(url, kind, fleet), name=f"fill-{kind}")
    timings["generate_s"] = time.monotonic() - began
    began = time.monotonic()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM (ANALYZE) vehicle_reading, meter_reading")
        await conn.execute("VACUUM (ANALYZE) vehicle, meter")
        for level in LEVELS:
            tables = ", ".join(level.table(kind) for kind in KINDS.values())
            await conn.execute(f"VACUUM (ANALYZE) {tables}".encode())
        await conn.execute("VACUUM (ANALYZE) vehicle_link")
        await conn.execute("CHECKPOINT")
        cur = await conn.execute(
            "SELECT (SELECT sum(readings) FROM vehicle_hourly),"
            " (SELECT sum(readings) FROM meter_hourly), pg_database_size(current_database())"
        )
        vehicle_rows, meter_rows, size = await cur.fetchone() or (0, 0, 0)
    timings["vacuum_s"] = time.monotonic() - began
    timings["vehicle_rows"] = float(vehicle_rows)
    timings["meter_rows"] = float(meter_rows)
    timings["database_bytes"] = float(size)
    return timings
