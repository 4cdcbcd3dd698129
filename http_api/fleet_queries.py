"""The fleet view's SQL: every vehicle's energies over a window at once, set-based, from the
hourly rollups plus or minus the raw readings of the edge hours' shorter sides; temperatures
only for the page of vehicles returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from http_api.rollup_queries import BY_IDS, ORIGIN, build, segments

# The fleet view: every vehicle at once, set-based, energies and counts only (temperatures are
# asked for the returned page alone, by build_fleet_page). A device's sums over the window are
# its rollups of the hours [r1, r2) (whole days from the daily ones) plus or minus raw readings
# of at most two pieces of the edge hours: either the window's part of an edge hour is added,
# or the whole hour is taken from the rollup and the part outside the window subtracted,
# whichever holds fewer readings (exact: energy is integer mWh). Both are read once for all
# devices, by day, by hour and by time. Only link segments cut inside the window (a link begun
# or ended in it) are read segment by segment.
_WINDOW_SUMS: Final = """
SELECT device_id,
       coalesce(h.energy, 0) + coalesce(r.e1, 0) + coalesce(r.e2, 0) AS energy,
       coalesce(h.readings, 0) + coalesce(r.n1, 0) + coalesce(r.n2, 0) AS readings,
       coalesce(r.e1, 0) AS e1, coalesce(r.n1, 0) AS n1,
       coalesce(r.e2, 0) AS e2, coalesce(r.n2, 0) AS n2
FROM (
    -- The rollup hours [r1, r2): whole days from the daily rollups, the hours outside them
    -- added or subtracted from the hourly ones (rollup_pieces).
    SELECT device_id, sum(energy)::bigint AS energy, sum(readings)::bigint AS readings
    FROM (
        SELECT {device} AS device_id, {energy} AS energy, readings
        FROM {daily} WHERE day >= %(d_lo)s AND day < %(d_hi)s
        UNION ALL
        -- Each range in two halves, so that the planner cannot take a plain index scan: a
        -- bitmap heap scan reads these rows in page order (~3 times faster for 100k rows).
        SELECT {device}, %(h1sign)s * {energy}, %(h1sign)s * readings
        FROM {hourly}
        WHERE hour >= %(h1lo)s AND hour < %(h1mid)s OR hour >= %(h1mid)s AND hour < %(h1hi)s
        UNION ALL
        SELECT {device}, %(h2sign)s * {energy}, %(h2sign)s * readings
        FROM {hourly}
        WHERE hour >= %(h2lo)s AND hour < %(h2mid)s OR hour >= %(h2mid)s AND hour < %(h2hi)s
    ) rollups
    GROUP BY 1
) h
FULL JOIN (
    -- Each piece apart: a cut segment with the same piece takes it from here (_LINKED_SUMS).
    SELECT {device} AS device_id,
           %(p1sign)s * (sum({energy}) FILTER (WHERE ts < %(p1hi)s))::bigint AS e1,
           %(p1sign)s * count(*) FILTER (WHERE ts < %(p1hi)s) AS n1,
           %(p2sign)s * (sum({energy}) FILTER (WHERE ts >= %(p1hi)s))::bigint AS e2,
           %(p2sign)s * count(*) FILTER (WHERE ts >= %(p1hi)s) AS n2
    FROM {history}
    WHERE ts >= %(hf)s AND ts < %(hc)s
      AND (ts >= %(p1lo)s AND ts < %(p1hi)s OR ts >= %(p2lo)s AND ts < %(p2hi)s)
    GROUP BY 1
) r USING (device_id)
"""
# A link segment cut inside the window, done as the window's sums are: rollup hours [r1, r2)
# and two signed raw pieces, each edge hour whichever way reads fewer readings (a segment inside
# one hour is read raw). Its edges are rarely the window's, so it is read by itself, by device.
_CUT_PIECES: Final = f"""
SELECT b.vehicle_id, b.device_id,
       CASE WHEN c.single THEN h.hc WHEN c.head_raw THEN h.hf + interval '1 hour'
            ELSE h.hf END AS r1,
       CASE WHEN c.single THEN h.hc WHEN c.tail_raw THEN h.hc - interval '1 hour'
            ELSE h.hc END AS r2,
       CASE WHEN c.single OR c.head_raw THEN 1 ELSE -1 END AS p1sign,
       CASE WHEN c.single OR c.head_raw THEN b.s ELSE h.hf END AS p1lo,
       CASE WHEN c.single THEN b.e WHEN c.head_raw THEN h.hf + interval '1 hour'
            ELSE b.s END AS p1hi,
       CASE WHEN c.tail_raw THEN 1 ELSE -1 END AS p2sign,
       CASE WHEN c.single THEN h.hc WHEN c.tail_raw THEN h.hc - interval '1 hour'
            ELSE b.e END AS p2lo,
       CASE WHEN c.single THEN h.hc WHEN c.tail_raw THEN b.e ELSE h.hc END AS p2hi
FROM link_seg b,
LATERAL (
    SELECT date_bin('1 hour', b.s, {ORIGIN}) AS hf,
           date_bin('1 hour', b.e - interval '1 microsecond', {ORIGIN}) + interval '1 hour' AS hc
) h,
LATERAL (
    SELECT h.hc - h.hf <= interval '1 hour' AS single,
           b.s > h.hf AND h.hf + interval '1 hour' - b.s <= b.s - h.hf AS head_raw,
           b.e < h.hc AND b.e - (h.hc - interval '1 hour')
               <= greatest(least(h.hc, %(now)s::timestamptz) - b.e, interval '0') AS tail_raw
) c
WHERE NOT (b.s = %(f)s AND b.e = %(t)s)
"""
_CUT_ROWS: Final = """
SELECT {energy} AS energy, readings::bigint AS readings
FROM {hourly} WHERE {device} = c.device_id AND hour >= c.r1 AND hour < c.r2
UNION ALL
SELECT c.p1sign * {energy}, c.p1sign
FROM {history} WHERE {device} = c.device_id AND ts >= c.p1lo AND ts < c.p1hi
  AND ts >= %(hf)s AND ts < %(hc)s AND NOT c.p1_shared
UNION ALL
SELECT c.p2sign * {energy}, c.p2sign
FROM {history} WHERE {device} = c.device_id AND ts >= c.p2lo AND ts < c.p2hi
  AND ts >= %(hf)s AND ts < %(hc)s AND NOT c.p2_shared
"""
# Per vehicle over its link segments: a segment equal to the window takes its device's window
# sums; a cut one is read by itself, summed inside the loop (one row out per segment).
_LINKED_SUMS: Final = """
SELECT vehicle_id, sum(energy)::bigint AS energy, sum(readings)::bigint AS readings
FROM (
    SELECT b.vehicle_id, w.energy, w.readings
    FROM link_seg b JOIN win w ON w.device_id = b.device_id
    WHERE b.s = %(f)s AND b.e = %(t)s
    UNION ALL
    SELECT c.vehicle_id,
           coalesce(r.energy, 0) + CASE WHEN c.p1_shared THEN w.e1 ELSE 0 END
               + CASE WHEN c.p2_shared THEN w.e2 ELSE 0 END,
           coalesce(r.readings, 0) + CASE WHEN c.p1_shared THEN w.n1 ELSE 0 END
               + CASE WHEN c.p2_shared THEN w.n2 ELSE 0 END
    FROM cut c LEFT JOIN win w ON w.device_id = c.device_id CROSS JOIN LATERAL (
        SELECT sum(energy) AS energy, sum(readings) AS readings FROM ({rows}) r
    ) r
) x
GROUP BY vehicle_id
"""


# The window's parts during which each link held, as rollup_queries.segments gives them, without
# the meter's name (the fleet needs none; the join cost ~3 ms a half).
_FLEET_LINKS: Final = """
SELECT vehicle_id, {device} AS device_id,
       greatest(valid_from, %(f)s::timestamptz) AS s,
       least(coalesce(valid_to, 'infinity'), %(t)s::timestamptz) AS e
FROM vehicle_link
WHERE valid_from < %(t)s AND (valid_to IS NULL OR valid_to > %(f)s)
"""


def _fleet_half(kind: Literal["vehicle", "meter"]) -> str:
    if kind == "vehicle":
        device = {"device": "vehicle_id", "energy": "delivered_dc_mwh"}
        tables = {
            "hourly": "vehicle_hourly",
            "daily": "vehicle_daily",
            "history": "vehicle_reading",
        }
    else:
        device = {"device": "meter_id", "energy": "consumed_ac_mwh"}
        tables = {"hourly": "meter_hourly", "daily": "meter_daily", "history": "meter_reading"}
    return f"""
WITH win AS ({_WINDOW_SUMS.format(**device, **tables)}),
link_seg AS ({_FLEET_LINKS.format(device=device["device"])}),
cut AS (
    -- A piece equal to one of the window's (same span and sign: a segment that begins or ends
    -- with the window) was read with the window's sums: ~30%% fewer probes per cut segment.
    SELECT x.*,
           (x.p1sign, x.p1lo, x.p1hi) = (%(p1sign)s, %(p1lo)s, %(p1hi)s) AS p1_shared,
           (x.p2sign, x.p2lo, x.p2hi) = (%(p2sign)s, %(p2lo)s, %(p2hi)s) AS p2_shared
    FROM ({_CUT_PIECES}) x
),
linked AS ({_LINKED_SUMS.format(rows=_CUT_ROWS.format(**device, **tables))})
"""


def build_fleet_vehicles() -> str:
    """Per vehicle (every vehicle): DC over the window and over its link segments."""
    return f"""{_fleet_half("vehicle")}
SELECT v.vehicle_id, v.name,
       coalesce(w.energy, 0) AS dc_mwh, coalesce(w.readings, 0) AS dc_readings,
       coalesce(l.energy, 0) AS dc_linked_mwh, coalesce(l.readings, 0) AS dc_linked_readings
FROM vehicle v LEFT JOIN win w ON w.device_id = v.vehicle_id LEFT JOIN linked l USING (vehicle_id)
"""


def build_fleet_page() -> str:
    """What only the vehicles of the returned page need: DC with temperatures over the window,
    and how long a meter was linked."""
    return f"""
WITH dc AS ({build("dc_window", "vehicle", by_ids=True)}),
seconds AS (
    SELECT vehicle_id, sum(extract(epoch FROM e - s))::float8 AS seconds
    FROM ({segments("dc_linked", BY_IDS)}) seg GROUP BY vehicle_id
)
SELECT dc.*, coalesce(seconds.seconds, 0) AS linked_seconds
FROM dc LEFT JOIN seconds USING (vehicle_id)
"""


def build_fleet_meters() -> str:
    """Per linked vehicle: AC of its meters over its link segments."""
    return f"""{_fleet_half("meter")}
SELECT vehicle_id, energy AS ac_mwh, readings AS ac_readings FROM linked
"""


_HOUR: Final = timedelta(hours=1)


def edge_pieces(start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    """The parameters of _WINDOW_SUMS: rollup hours [r1, r2) and two signed raw pieces, each
    edge done the way that reads fewer readings (none are later than ``now``)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    hf = start.replace(minute=0, second=0, microsecond=0)
    hc = end.replace(minute=0, second=0, microsecond=0)
    if hc < end:
        hc += _HOUR

    def cost(lo: datetime, hi: datetime) -> timedelta:
        return max(min(hi, now) - lo, timedelta(0))

    head: tuple[int, datetime, datetime] = (1, hf, hf)  # empty
    tail: tuple[int, datetime, datetime] = (1, hc, hc)
    r1, r2 = hf, hc
    if hc - hf == _HOUR:  # one hour touched: the window raw, or the hour less both sides
        if cost(start, end) <= cost(hf, start) + cost(end, hc):
            head, r1, r2 = (1, start, end), hf, hf
        else:
            head, tail = (-1, hf, start), (-1, end, hc)
    else:
        if start > hf:
            if cost(start, hf + _HOUR) <= cost(hf, start):
                head, r1 = (1, start, hf + _HOUR), hf + _HOUR
            else:
                head = (-1, hf, start)
        if end < hc:
            if cost(hc - _HOUR, end) <= cost(end, hc):
                tail, r2 = (1, hc - _HOUR, end), hc - _HOUR
            else:
                tail = (-1, end, hc)
    return {
        "hf": hf,
        "hc": hc,
        "r1": r1,
        "r2": r2,
        "p1sign": head[0],
        "p1lo": head[1],
        "p1hi": head[2],
        "p2sign": tail[0],
        "p2lo": tail[1],
        "p2hi": tail[2],
    } | rollup_pieces(r1, r2, now)


_DAY: Final = timedelta(days=1)


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def rollup_pieces(r1: datetime, r2: datetime, now: datetime) -> dict[str, Any]:
    """The whole hours [r1, r2) as whole UTC days [d_lo, d_hi) of daily rollups plus two signed
    ranges of hourly rollups: each partial day either adds its hours inside [r1, r2) or takes the
    whole day and subtracts the hours outside, whichever reads fewer hourly rows (hours after
    ``now`` cost nothing: they have no rows yet). Both ends must lie on whole hours."""

    def cost(lo: datetime, hi: datetime) -> timedelta:
        return max(min(hi, now + _HOUR) - lo, timedelta(0))

    first_midnight = _day_start(r1)
    if first_midnight < r1:
        first_midnight += _DAY
    last_midnight = _day_start(r2)
    d_lo = d_hi = first_midnight
    head: tuple[int, datetime, datetime] = (1, r1, r1)  # empty
    tail: tuple[int, datetime, datetime] = (1, r2, r2)
    if r2 <= r1:
        pass
    elif last_midnight < first_midnight:  # inside one day: its hours, or the day less the rest
        day = last_midnight
        if cost(r1, r2) <= cost(day, r1) + cost(r2, day + _DAY):
            head = (1, r1, r2)
        else:
            d_lo, d_hi = day, day + _DAY
            head, tail = (-1, day, r1), (-1, r2, day + _DAY)
    else:
        d_lo, d_hi = first_midnight, last_midnight
        if r1 < first_midnight:
            if cost(r1, first_midnight) <= cost(first_midnight - _DAY, r1):
                head = (1, r1, first_midnight)
            else:
                d_lo, head = first_midnight - _DAY, (-1, first_midnight - _DAY, r1)
        if last_midnight < r2:
            if cost(last_midnight, r2) <= cost(r2, last_midnight + _DAY):
                tail = (1, last_midnight, r2)
            else:
                d_hi, tail = last_midnight + _DAY, (-1, r2, last_midnight + _DAY)
    return {
        "d_lo": d_lo,
        "d_hi": d_hi,
        "h1sign": head[0],
        "h1lo": head[1],
        "h1hi": head[2],
        "h1mid": head[1] + (head[2] - head[1]) / 2,
        "h2sign": tail[0],
        "h2lo": tail[1],
        "h2hi": tail[2],
        "h2mid": tail[1] + (tail[2] - tail[1]) / 2,
    }


async def fleet_sums(
    pool: AsyncConnectionPool,
    window: tuple[datetime, datetime],
    page: Callable[[list[dict[str, Any]]], Collection[int]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per vehicle (every vehicle): energies and counts over the window, DC and DC while linked
    with the vehicle_id and name, AC under ac_mwh and ac_readings (0 without a link); then, in
    the same snapshot, build_fleet_page for the vehicles ``page`` picks from those rows (by
    vehicle_id)."""
    params = {"f": window[0], "t": window[1], "vehicle": None}
    now = datetime.now(UTC)
    params |= edge_pieces(*window, now) | {"now": now}
    # The vehicle and the meter halves run at once on two connections (two cores), in one
    # snapshot, exported by the first, so that they see the same readings as one statement did.
    async with pool.connection() as first, pool.connection() as second:
        async with first.pipeline():
            await first.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snapshot_cur = await first.execute(b"SELECT pg_export_snapshot()")
        [(snapshot,)] = await snapshot_cur.fetchall()
        halves = await asyncio.gather(
            _run_half(first, build_fleet_vehicles(), params, None),
            _run_half(second, build_fleet_meters(), params, snapshot),
        )
        vehicles, meters = halves
        ac = {row["vehicle_id"]: row for row in meters}
        for row in vehicles:
            linked = ac.get(row["vehicle_id"])
            row["ac_mwh"] = 0 if linked is None else linked["ac_mwh"]
            row["ac_readings"] = 0 if linked is None else linked["ac_readings"]
        ids = list(page(vehicles))
        if not ids:
            return vehicles, []
        async with first.cursor(row_factory=dict_row) as cur:
            await cur.execute(build_fleet_page().encode(), params | {"ids": ids}, prepare=False)
            return vehicles, await cur.fetchall()


async def _run_half(
    conn: AsyncConnection[Any], statement: str, params: dict[str, Any], snapshot: str | None
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        async with conn.pipeline():
            if snapshot is not None:
                await conn.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                )
            await conn.execute(b"SET LOCAL jit = off")  # as in rollup_queries.vehicle_sums
            # CTEs have no statistics: the planner guesses 200 devices of 10,000 and probes the
            # window sums in a nested loop (7.7 s instead of 0.4 s). Only the LATERAL reads of
            # the cut segments are nested loops, as they must be.
            await conn.execute(b"SET LOCAL enable_nestloop = off")
            # The two halves already keep both cores busy: parallel workers only compete.
            await conn.execute(b"SET LOCAL max_parallel_workers_per_gather = 0")
            # Never prepared: after five runs on one connection PostgreSQL may switch to a generic
            # plan, without the constant bounds (pruning, estimates): 4.1 s instead of 0.9 s.
            await cur.execute(statement.encode(), params, prepare=False)
        return await cur.fetchall()
