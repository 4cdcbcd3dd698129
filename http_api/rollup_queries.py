"""Analytics SQL: energy and temperature over time segments, from hourly rollups for the whole
hours of a segment and from raw history only for its partial hours at either edge.

Every query is built from three parts: the segments (a device and a half-open span [s, e)), the
stream read over them (meter AC or vehicle DC), and how the rows are grouped. Energy is integer
mWh, so rollup sums and raw sums agree exactly.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

# ac_linked, dc_linked: a meter's AC, the vehicle's DC, over the vehicle's link segments;
# dc_linked_cut: DC over those that do not cover the whole window (one that does has the DC of
# the window, dc_window, which a request reads anyway: reading it again cost ~100 buffers).
Stream: TypeAlias = Literal["ac_linked", "dc_linked", "dc_linked_cut", "dc_window"]
Grouping: TypeAlias = Literal["total", "hour", "vehicle", "segment"]

ORIGIN: Final = "timestamptz '2000-01-01 00:00:00+00'"  # as the gateway's date_bin

# Which vehicles: %(vehicle)s is one vehicle_id, or NULL for every vehicle; or one vehicle by
# %(name)s, so that a request needs no separate round trip to look its id up.
_BY_ID: Final = "(%(vehicle)s::int IS NULL OR {alias}.vehicle_id = %(vehicle)s)"
_BY_NAME: Final = "{alias}.vehicle_id = (SELECT vehicle_id FROM vehicle WHERE name = %(name)s)"
BY_IDS: Final = "{alias}.vehicle_id = ANY(%(ids)s::int[])"
_WINDOW_SEGMENTS: Final = """
SELECT v.vehicle_id, v.vehicle_id AS device_id, NULL::text AS device_name,
       %(f)s::timestamptz AS s, %(t)s::timestamptz AS e
FROM vehicle v WHERE {who}
"""
# The parts of the window during which a link held; device_id is the meter or the vehicle. (The
# end as coalesce(): vehicle_link_vehicle_end_idx finds the links ending after f.)
_LINK_SEGMENTS: Final = """
SELECT l.vehicle_id, l.{device} AS device_id, {name} AS device_name,
       greatest(l.valid_from, %(f)s::timestamptz) AS s,
       least(coalesce(l.valid_to, 'infinity'), %(t)s::timestamptz) AS e
FROM vehicle_link l JOIN meter m USING (meter_id)
WHERE {who}
  AND l.valid_from < %(t)s AND coalesce(l.valid_to, 'infinity') > %(f)s{only_cut}
"""
# dc_linked_cut: not the segment that covers the whole window
_ONLY_CUT: Final = """
  AND NOT (l.valid_from <= %(f)s AND coalesce(l.valid_to, 'infinity') >= %(t)s)"""
# [s, h1) and [h2, e) are read raw, whole hours [h1, h2) from the rollup. Without a whole hour
# inside the segment, h1 = h2 = e and all of it is read raw.
_BOUNDS: Final = f"""
SELECT seg.*,
       CASE WHEN x.c < x.f THEN x.c ELSE seg.e END AS h1,
       CASE WHEN x.c < x.f THEN x.f ELSE seg.e END AS h2
FROM seg, LATERAL (
    SELECT date_bin('1 hour', seg.s - interval '1 microsecond', {ORIGIN}) + interval '1 hour' AS c,
           date_bin('1 hour', seg.e, {ORIGIN}) AS f
) x
"""
# Every segment lies inside the window [f, t): saying so with constants lets the planner keep
# only the window's daily partitions (plan-time pruning), so planning does not grow with the
# days of history kept (with 31 daily partitions it took ~1 ms per statement, more than running it).
_IN_WINDOW: Final = " AND ts >= %(f)s AND ts < %(t)s"
_METER_ROWS: Final = f"""
SELECT date_bin('1 hour', ts, {ORIGIN}) AS hour, consumed_ac_mwh AS energy, 1 AS readings,
       NULL::float8 AS temp_sum, NULL::real AS temp_min, NULL::real AS temp_max
FROM meter_reading WHERE meter_id = b.device_id AND ts >= b.s AND ts < b.h1{_IN_WINDOW}
UNION ALL
SELECT date_bin('1 hour', ts, {ORIGIN}), consumed_ac_mwh, 1, NULL, NULL, NULL
FROM meter_reading WHERE meter_id = b.device_id AND ts >= b.h2 AND ts < b.e{_IN_WINDOW}
UNION ALL
SELECT hour, consumed_ac_mwh, readings, NULL, NULL, NULL
FROM meter_hourly WHERE meter_id = b.device_id AND hour >= b.h1 AND hour < b.h2
"""
_VEHICLE_ROWS: Final = f"""
SELECT date_bin('1 hour', ts, {ORIGIN}) AS hour, delivered_dc_mwh AS energy, 1 AS readings,
       battery_temp::float8 AS temp_sum, battery_temp AS temp_min, battery_temp AS temp_max
FROM vehicle_reading WHERE vehicle_id = b.device_id AND ts >= b.s AND ts < b.h1{_IN_WINDOW}
UNION ALL
SELECT date_bin('1 hour', ts, {ORIGIN}), delivered_dc_mwh, 1, battery_temp::float8,
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


def segments(stream: Stream, who: str = _BY_ID) -> str:
    if stream == "dc_window":
        return _WINDOW_SEGMENTS.format(who=who.format(alias="v"))
    device = "meter_id" if stream == "ac_linked" else "vehicle_id"
    only_cut = _ONLY_CUT if stream == "dc_linked_cut" else ""
    return _LINK_SEGMENTS.format(
        device=device, name="m.name", who=who.format(alias="l"), only_cut=only_cut
    )


def build(
    stream: Stream, grouping: Grouping, *, by_name: bool = False, by_ids: bool = False
) -> str:
    """The SQL of one stream over its segments, grouped; exposed for tests and EXPLAIN."""
    rows = _METER_ROWS if stream == "ac_linked" else _VEHICLE_ROWS
    keys = _GROUPS[grouping]
    select_keys = f"{keys}," if keys else ""
    group_by = f"GROUP BY {keys} ORDER BY {keys}" if keys else ""
    who = _BY_NAME if by_name else BY_IDS if by_ids else _BY_ID
    return f"""
WITH seg AS ({segments(stream, who)}), bounded AS ({_BOUNDS})
SELECT {select_keys}
       coalesce(sum(r.energy), 0)::bigint AS energy,
       coalesce(sum(r.readings), 0)::bigint AS readings,
       sum(r.temp_sum) AS temp_sum, min(r.temp_min) AS temp_min, max(r.temp_max) AS temp_max
FROM bounded b LEFT JOIN LATERAL ({rows}) r ON true
{group_by}
"""


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
            # The fleet's estimated cost passes jit_above_cost, and compiling its plan took
            # 3.8 s of a 4.0 s statement (1,000 vehicles); the per-row work here is too small for
            # compiled expressions to repay that.
            await conn.execute(b"SET LOCAL jit = off")
            # Planning these statements took ~0.4 ms each, twice as long as running them. One
            # generic plan per connection, prepared once, prunes the daily partitions at run
            # time instead: the three statements of a performance request went from ~2.4 to
            # ~1.2 ms (10,000 vehicles; as fast with 400 daily partitions as with 30).
            await conn.execute(b"SET LOCAL plan_cache_mode = force_generic_plan")
            await cursors[0].execute(b"SELECT 1 FROM vehicle WHERE name = %(name)s", params)
            for cur, (stream, grouping) in zip(cursors[1:], statements, strict=True):
                await cur.execute(_sql(stream, grouping), params, prepare=True)
            # Ended here, in the same round trip, not by the pool on return (one more).
            await conn.execute(b"COMMIT")
        if await cursors[0].fetchone() is None:
            return None
        return [await cur.fetchall() for cur in cursors[1:]]


@functools.cache
def _sql(stream: Stream, grouping: Grouping) -> bytes:
    return build(stream, grouping, by_name=True).encode()
