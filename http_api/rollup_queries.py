"""Analytics SQL: energy and temperature over time segments, from hourly rollups for the whole
hours of a segment and from raw history only for its partial hours at either edge.

Every query is built from three parts: the segments (a device and a half-open span [s, e)), the
stream read over them (meter AC or vehicle DC), and how the rows are grouped. Energy is integer
mWh, so rollup sums and raw sums agree exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

Stream: TypeAlias = Literal["ac_linked", "dc_linked", "dc_window"]
Grouping: TypeAlias = Literal["total", "hour", "vehicle", "segment"]

_ORIGIN: Final = "timestamptz '2000-01-01 00:00:00+00'"  # as the gateway's date_bin

# Which vehicles: %(vehicle)s is one vehicle_id, or NULL for every vehicle; or one vehicle by
# %(name)s, so that a request needs no separate round trip to look its id up.
_BY_ID: Final = "(%(vehicle)s::int IS NULL OR {alias}.vehicle_id = %(vehicle)s)"
_BY_NAME: Final = "{alias}.vehicle_id = (SELECT vehicle_id FROM vehicle WHERE name = %(name)s)"
_WINDOW_SEGMENTS: Final = """
SELECT v.vehicle_id, v.vehicle_id AS device_id, NULL::text AS device_name,
       %(f)s::timestamptz AS s, %(t)s::timestamptz AS e
FROM vehicle v WHERE {who}
"""
# The parts of the window during which a link held; device_id is the meter or the vehicle.
_LINK_SEGMENTS: Final = """
SELECT l.vehicle_id, l.{device} AS device_id, {name} AS device_name,
       greatest(l.valid_from, %(f)s::timestamptz) AS s,
       least(coalesce(l.valid_to, 'infinity'), %(t)s::timestamptz) AS e
FROM vehicle_link l JOIN meter m USING (meter_id)
WHERE {who}
  AND l.valid_from < %(t)s AND (l.valid_to IS NULL OR l.valid_to > %(f)s)
"""
# [s, h1) and [h2, e) are read raw, whole hours [h1, h2) from the rollup. Without a whole hour
# inside the segment, h1 = h2 = e and all of it is read raw.
_BOUNDS: Final = f"""
SELECT seg.*,
       CASE WHEN x.c < x.f THEN x.c ELSE seg.e END AS h1,
       CASE WHEN x.c < x.f THEN x.f ELSE seg.e END AS h2
FROM seg, LATERAL (
    SELECT date_bin('1 hour', seg.s - interval '1 microsecond', {_ORIGIN}) + interval '1 hour' AS c,
           date_bin('1 hour', seg.e, {_ORIGIN}) AS f
) x
"""
# Every segment lies inside the window [f, t): saying so with constants lets the planner keep
# only the window's daily partitions (plan-time pruning), so planning does not grow with the
# days of history kept (with 31 daily partitions it took ~1 ms per statement, more than running it).
_IN_WINDOW: Final = " AND ts >= %(f)s AND ts < %(t)s"
_METER_ROWS: Final = f"""
SELECT date_bin('1 hour', ts, {_ORIGIN}) AS hour, consumed_ac_mwh AS energy, 1 AS readings,
       NULL::float8 AS temp_sum, NULL::real AS temp_min, NULL::real AS temp_max
FROM meter_reading WHERE meter_id = b.device_id AND ts >= b.s AND ts < b.h1{_IN_WINDOW}
UNION ALL
SELECT date_bin('1 hour', ts, {_ORIGIN}), consumed_ac_mwh, 1, NULL, NULL, NULL
FROM meter_reading WHERE meter_id = b.device_id AND ts >= b.h2 AND ts < b.e{_IN_WINDOW}
UNION ALL
SELECT hour, consumed_ac_mwh, readings, NULL, NULL, NULL
FROM meter_hourly WHERE meter_id = b.device_id AND hour >= b.h1 AND hour < b.h2
"""
_VEHICLE_ROWS: Final = f"""
SELECT date_bin('1 hour', ts, {_ORIGIN}) AS hour, delivered_dc_mwh AS energy, 1 AS readings,
       battery_temp::float8 AS temp_sum, battery_temp AS temp_min, battery_temp AS temp_max
FROM vehicle_reading WHERE vehicle_id = b.device_id AND ts >= b.s AND ts < b.h1{_IN_WINDOW}
UNION ALL
SELECT date_bin('1 hour', ts, {_ORIGIN}), delivered_dc_mwh, 1, battery_temp::float8,
       battery_temp, battery_temp
FROM vehicle_reading WHERE vehicle_id = b.device_id AND ts >= b.h2 AND ts < b.e{_IN_WINDOW}
UNION ALL
SELECT hour, delivered_dc_mwh, readings, battery_temp_sum, battery_temp_min, battery_temp_max
FROM vehicle_hourly WHERE vehicle_id = b.device_id AND hour >= b.h1 AND hour < b.h2
"""
_GROUPS: Final[dict[Grouping, str]] = {
    "total": "",
    "hour": "r.hour",
    "vehicle": "b.vehicle_id",
    "segment": "b.device_name, b.s, b.e",
}


def _segments(stream: Stream, who: str = _BY_ID) -> str:
    if stream == "dc_window":
        return _WINDOW_SEGMENTS.format(who=who.format(alias="v"))
    device = "meter_id" if stream == "ac_linked" else "vehicle_id"
    return _LINK_SEGMENTS.format(device=device, name="m.name", who=who.format(alias="l"))


def build(stream: Stream, grouping: Grouping, *, by_name: bool = False) -> str:
    """The SQL of one stream over its segments, grouped; exposed for tests and EXPLAIN."""
    rows = _METER_ROWS if stream == "ac_linked" else _VEHICLE_ROWS
    keys = _GROUPS[grouping]
    select_keys = f"{keys}," if keys else ""
    group_by = f"GROUP BY {keys} ORDER BY {keys}" if keys else ""
    return f"""
WITH seg AS ({_segments(stream, _BY_NAME if by_name else _BY_ID)}), bounded AS ({_BOUNDS})
SELECT {select_keys}
       coalesce(sum(r.energy), 0)::bigint AS energy,
       coalesce(sum(r.readings), 0)::bigint AS readings,
       sum(r.temp_sum) AS temp_sum, min(r.temp_min) AS temp_min, max(r.temp_max) AS temp_max
FROM bounded b LEFT JOIN LATERAL ({rows}) r ON true
{group_by}
"""


async def stream_sums(
    pool: AsyncConnectionPool,
    stream: Stream,
    grouping: Grouping,
    window: tuple[datetime, datetime],
    vehicle_id: int | None,
) -> list[dict[str, Any]]:
    params = {"f": window[0], "t": window[1], "vehicle": vehicle_id}
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        async with conn.pipeline():  # one round trip for both statements
            # The fleet's estimated cost passes jit_above_cost, and compiling its plan took
            # 3.8 s of a 4.0 s statement (1,000 vehicles); the per-row work here is too small for
            # compiled expressions to repay that.
            await conn.execute(b"SET LOCAL jit = off")
            await cur.execute(build(stream, grouping).encode(), params)
        return await cur.fetchall()


async def vehicle_id_of(pool: AsyncConnectionPool, name: str) -> int | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT vehicle_id FROM vehicle WHERE name = %s", (name,))
        row = await cur.fetchone()
        return None if row is None else int(row[0])


async def vehicle_names(pool: AsyncConnectionPool) -> dict[int, str]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT vehicle_id, name FROM vehicle")
        return {int(vehicle_id): str(name) for vehicle_id, name in await cur.fetchall()}


# The fleet view: the same sums for every vehicle at once, set-based. A segment's partial hours
# at the window's edges and its whole hours are, for almost every segment, exactly the window's
# own: those are read once for all devices (the edge hours by time, the whole hours from the
# rollups by hour) and joined by device. Only segments cut inside the window (a link that began
# or ended in it) are read per segment, as above.
_FLEET_SEGMENTS: Final = f"""
win_seg AS ({_segments("dc_window")}), link_seg AS ({_segments("ac_linked")}),
win_b AS (SELECT * FROM ({_BOUNDS.replace("seg", "win_seg")}) b),
link_b AS (SELECT * FROM ({_BOUNDS.replace("seg", "link_seg")}) b)
"""
_EDGE: Final = """
SELECT {device} AS device_id, ts >= %(h2)s AS tail, sum({energy}) AS energy,
       count(*) AS readings, {temps}
FROM {table} WHERE ts >= %(f)s AND ts < %(t)s AND (ts < %(h1)s OR ts >= %(h2)s)
GROUP BY 1, 2
"""
_WHOLE: Final = """
SELECT {device} AS device_id, sum({energy}) AS energy, sum(readings) AS readings, {temps}
FROM {table} WHERE hour >= %(h1)s AND hour < %(h2)s
GROUP BY 1
"""
_VEHICLE_TEMPS: Final = (
    "sum(battery_temp::float8) AS temp_sum, min(battery_temp) AS temp_min,"
    " max(battery_temp) AS temp_max"
)
_HOURLY_TEMPS: Final = (
    "sum(battery_temp_sum) AS temp_sum, min(battery_temp_min) AS temp_min,"
    " max(battery_temp_max) AS temp_max"
)
_NO_TEMPS: Final = "NULL::float8 AS temp_sum, NULL::real AS temp_min, NULL::real AS temp_max"
# The rows of one stream over segments `b` (a CTE of bounded segments), from the shared edge and
# whole-hour sums where a segment's part equals the window's, else read for that segment.
_FLEET_ROWS: Final = """
SELECT b.vehicle_id, x.energy, x.readings, x.temp_sum, x.temp_min, x.temp_max
FROM {b} b JOIN {edge} x ON x.device_id = b.device_id AND NOT x.tail
WHERE b.s = %(f)s AND b.h1 = %(h1)s
UNION ALL
SELECT b.vehicle_id, x.energy, x.readings, x.temp_sum, x.temp_min, x.temp_max
FROM {b} b JOIN {edge} x ON x.device_id = b.device_id AND x.tail
WHERE b.h2 = %(h2)s AND b.e = %(t)s
UNION ALL
SELECT b.vehicle_id, x.energy, x.readings, x.temp_sum, x.temp_min, x.temp_max
FROM {b} b JOIN {whole} x ON x.device_id = b.device_id
WHERE b.h1 = %(h1)s AND b.h2 = %(h2)s
UNION ALL
SELECT b.vehicle_id, r.energy, r.readings, r.temp_sum, r.temp_min, r.temp_max
FROM {b} b CROSS JOIN LATERAL ({rows}) r
WHERE NOT (b.s = %(f)s AND b.h1 = %(h1)s AND b.h2 = %(h2)s AND b.e = %(t)s)
"""
_FLEET_SUMS: Final = """
SELECT vehicle_id, sum(energy)::bigint AS energy, sum(readings)::bigint AS readings,
       sum(temp_sum) AS temp_sum, min(temp_min) AS temp_min, max(temp_max) AS temp_max
FROM ({rows}) r GROUP BY vehicle_id
"""


def _cut_rows(rows: str) -> str:
    """Per-segment rows limited to the parts that differ from the window's own."""
    head, tail, whole = rows.split("UNION ALL")
    return (
        f"{head} AND NOT (b.s = %(f)s AND b.h1 = %(h1)s) UNION ALL"
        f"{tail} AND NOT (b.h2 = %(h2)s AND b.e = %(t)s) UNION ALL"
        f"{whole} AND NOT (b.h1 = %(h1)s AND b.h2 = %(h2)s)"
    )


def build_fleet() -> str:
    """One statement: per vehicle, DC over the window, DC and AC over its link segments."""

    def sums(b: str, edge: str, whole: str, rows: str) -> str:
        body = _FLEET_ROWS.format(b=b, edge=edge, whole=whole, rows=_cut_rows(rows))
        return _FLEET_SUMS.format(rows=body)

    vehicle = {"device": "vehicle_id", "energy": "delivered_dc_mwh"}
    meter = {"device": "meter_id", "energy": "consumed_ac_mwh"}
    return f"""
WITH {_FLEET_SEGMENTS},
dc_edge AS ({_EDGE.format(table="vehicle_reading", temps=_VEHICLE_TEMPS, **vehicle)}),
dc_whole AS ({_WHOLE.format(table="vehicle_hourly", temps=_HOURLY_TEMPS, **vehicle)}),
ac_edge AS ({_EDGE.format(table="meter_reading", temps=_NO_TEMPS, **meter)}),
ac_whole AS ({_WHOLE.format(table="meter_hourly", temps=_NO_TEMPS, **meter)}),
link_dc_b AS (SELECT vehicle_id, vehicle_id AS device_id, s, e, h1, h2 FROM link_b),
dc AS ({sums("win_b", "dc_edge", "dc_whole", _VEHICLE_ROWS)}),
dc_linked AS ({sums("link_dc_b", "dc_edge", "dc_whole", _VEHICLE_ROWS)}),
ac AS ({sums("link_b", "ac_edge", "ac_whole", _METER_ROWS)}),
linked AS (SELECT vehicle_id, sum(extract(epoch FROM e - s))::float8 AS seconds
           FROM link_b GROUP BY vehicle_id)
SELECT v.vehicle_id, v.name,
       coalesce(dc.energy, 0) AS dc_mwh, coalesce(dc.readings, 0) AS dc_readings,
       dc.temp_sum, dc.temp_min, dc.temp_max,
       coalesce(dl.energy, 0) AS dc_linked_mwh, coalesce(dl.readings, 0) AS dc_linked_readings,
       coalesce(ac.energy, 0) AS ac_mwh, coalesce(ac.readings, 0) AS ac_readings,
       coalesce(linked.seconds, 0) AS linked_seconds
FROM vehicle v LEFT JOIN dc USING (vehicle_id) LEFT JOIN dc_linked dl USING (vehicle_id)
LEFT JOIN ac USING (vehicle_id) LEFT JOIN linked USING (vehicle_id)
"""


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[h1, h2): the whole UTC hours of [start, end), as _BOUNDS computes them; (end, end) when
    there is none."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    floor = end.replace(minute=0, second=0, microsecond=0)
    ceil = start.replace(minute=0, second=0, microsecond=0)
    if ceil < start:
        ceil += timedelta(hours=1)
    return (ceil, floor) if ceil < floor else (end, end)


async def fleet_sums(
    pool: AsyncConnectionPool, window: tuple[datetime, datetime]
) -> list[dict[str, Any]]:
    """Per vehicle (every vehicle): the sums of build_fleet over the window."""
    h1, h2 = whole_hours(*window)
    params = {"f": window[0], "t": window[1], "h1": h1, "h2": h2, "vehicle": None}
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        async with conn.pipeline():
            await conn.execute(b"SET LOCAL jit = off")  # as in stream_sums
            # The planner cannot estimate how many segments take the shared edge and whole-hour
            # sums (a CTE has no statistics: it guesses 1 of 10,000) and re-aggregated the
            # rollups once per segment in a nested loop (6.7 s); hash joins take ~5 ms. The
            # per-segment reads are LATERAL and stay nested loops.
            await conn.execute(b"SET LOCAL enable_nestloop = off")
            # Never prepared: after five runs on one connection PostgreSQL may switch to a generic
            # plan, without the constant bounds (pruning, estimates): 4.1 s instead of 0.9 s.
            await cur.execute(build_fleet().encode(), params, prepare=False)
        return await cur.fetchall()


async def vehicle_sums(
    pool: AsyncConnectionPool,
    name: str,
    window: tuple[datetime, datetime],
    statements: tuple[tuple[Stream, Grouping], ...],
) -> list[list[dict[str, Any]]] | None:
    """The rows of each (stream, grouping) for the vehicle called ``name``, all sent in one
    round trip with the lookup of its id; None when there is no such vehicle."""
    params = {"f": window[0], "t": window[1], "name": name}
    async with pool.connection() as conn:
        cursors = [conn.cursor(row_factory=dict_row) for _ in range(len(statements) + 1)]
        async with conn.pipeline():
            await conn.execute(b"SET LOCAL jit = off")  # as in stream_sums
            await cursors[0].execute(b"SELECT 1 FROM vehicle WHERE name = %(name)s", params)
            for cur, (stream, grouping) in zip(cursors[1:], statements, strict=True):
                await cur.execute(build(stream, grouping, by_name=True).encode(), params)
        if await cursors[0].fetchone() is None:
            return None
        return [await cur.fetchall() for cur in cursors[1:]]
