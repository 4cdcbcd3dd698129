"""The fleet view's SQL: every vehicle's energies over a window at once, set-based, from the
rollup levels and raw history at the window's edges (the pieces: http_api/window_pieces.py);
temperatures only for the page of vehicles returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.reading_kinds import KINDS, ReadingKind
from gateway.rollup_levels import LEVELS
from http_api.rollup_queries import BY_IDS, build, segments
from http_api.window_pieces import RAW, LinkedReads, Piece, Segment, cover, linked_reads

Half: TypeAlias = Literal["vehicle", "meter"]  # DC of every vehicle, or AC of their meters

# Where each level's rows are: (table, the column of their start, the count of readings) by
# level name, per kind.
_SOURCES: Final = {
    name: {RAW: (kind.history, "ts", "1")}
    | {level.name: (level.table(kind), level.key, "readings") for level in LEVELS}
    for name, kind in KINDS.items()
}

# One piece of the window for every device: its rows whose start lies in the piece, with the
# piece's sign. Every branch gives the same types (bigint energies, integer counts), so that the
# planner appends the branches' rows as they are (mixed types cost a projection a row).
_WINDOW_PIECE: Final = """
SELECT {device} AS device_id, {sign}{energy} AS energy, {sign}{readings} AS readings
FROM {table} WHERE {key} >= %({name}_start)s AND {key} < %({name}_end)s"""
# Energies by fleetgate_sum (schema.sql): sum() of bigints keeps a 128-bit state per group.
_WINDOW_SUMS: Final = """
SELECT device_id, fleetgate_sum(energy) AS energy, sum(readings) AS readings
FROM ({pieces}) pieces
GROUP BY 1
"""
_NO_PIECE: Final = "SELECT NULL::int AS device_id, NULL::bigint, NULL::int WHERE false"

# The pieces read for the link segments cut inside the window, for one device each (index
# probes), given as arrays per level (window_pieces.linked_reads). Raw pieces also lie in
# [cut_raw_from, cut_raw_to): constants, so that the planner keeps only those days' partitions.
_CUT_PIECES: Final = """
SELECT c.vehicle_id, c.sign * r.energy AS energy, c.sign * r.readings AS readings
FROM unnest(%({level}_vehicle_ids)s::int[], %({level}_device_ids)s::int[],
            %({level}_signs)s::int[], %({level}_starts)s::timestamptz[],
            %({level}_ends)s::timestamptz[]) AS c (vehicle_id, device_id, sign, start_at, end_at)
CROSS JOIN LATERAL (
    SELECT fleetgate_sum({energy}) AS energy, {count} AS readings
    FROM {table}
    WHERE {device} = c.device_id AND {key} >= c.start_at AND {key} < c.end_at{bounds}
) r"""
_RAW_BOUNDS: Final = " AND ts >= %(cut_raw_from)s AND ts < %(cut_raw_to)s"

# One half: every device's window sums; the (vehicle, device) pairs that take them whole (a link
# that covers the window, or a vehicle's segments read as the window less their gaps); and, per
# vehicle, what was read for its cut segments.
_HALF: Final = """
WITH window_sums AS ({window_sums}),
takes_window AS (
    SELECT vehicle_id, {link_device} AS device_id FROM vehicle_link
    WHERE valid_from <= %(window_start)s AND (valid_to IS NULL OR valid_to >= %(window_end)s)
    UNION ALL
    SELECT * FROM unnest(%(window_pair_vehicle_ids)s::int[], %(window_pair_device_ids)s::int[])
),
cut_sums AS (
    SELECT vehicle_id, fleetgate_sum(energy) AS energy, fleetgate_sum(readings) AS readings
    FROM ({cut_pieces}) cut
    GROUP BY vehicle_id
)
"""
# Per vehicle (every vehicle): DC over the window and while linked. Here a pair's device is the
# vehicle itself, so a vehicle has at most one pair that takes the window (its own sums).
_VEHICLES: Final = """
SELECT v.vehicle_id, coalesce(w.energy, 0) AS dc_mwh,
       CASE WHEN t.vehicle_id IS NULL THEN 0 ELSE coalesce(w.energy, 0) END
           + coalesce(c.energy, 0) AS dc_linked_mwh,
       CASE WHEN t.vehicle_id IS NULL THEN 0 ELSE coalesce(w.readings, 0) END
           + coalesce(c.readings, 0) AS dc_linked_readings
FROM vehicle v
LEFT JOIN window_sums w ON w.device_id = v.vehicle_id
LEFT JOIN takes_window t ON t.vehicle_id = v.vehicle_id
LEFT JOIN cut_sums c ON c.vehicle_id = v.vehicle_id
"""
# Per linked vehicle: its name (asked here, the half with less to do) and the AC of its meters,
# a row per pair that takes its meter's window sums (if the meter has any) and one for its cut
# segments: fleet_sums adds a vehicle's rows.
_METERS: Final = """
SELECT t.vehicle_id, v.name, w.energy, w.readings
FROM takes_window t JOIN window_sums w USING (device_id) JOIN vehicle v USING (vehicle_id)
UNION ALL
SELECT c.vehicle_id, v.name, coalesce(c.energy, 0), coalesce(c.readings, 0)
FROM cut_sums c JOIN vehicle v USING (vehicle_id)
"""
# The parts of the window during which a link held, of the links that begin or end inside it.
# (valid_to IS NULL OR ...: both are indexed, where coalesce() made a scan of all links.)
_CUT_SEGMENTS: Final = b"""
SELECT vehicle_id, meter_id, greatest(valid_from, %(window_start)s::timestamptz),
       least(coalesce(valid_to, 'infinity'), %(window_end)s::timestamptz)
FROM vehicle_link
WHERE valid_from < %(window_end)s AND (valid_to IS NULL OR valid_to > %(window_start)s)
  AND (valid_from > %(window_start)s OR valid_to < %(window_end)s)
"""


def _kind(half: Half) -> ReadingKind[Any]:
    return KINDS[half]


def _window_sums(half: Half, pieces: Sequence[Piece]) -> str:
    kind = _kind(half)
    branches = []
    for piece in pieces:
        table, key, readings = _SOURCES[half][piece.level]
        branches.append(
            _WINDOW_PIECE.format(
                device=kind.device_id,
                energy=kind.energy.name,
                readings=readings,
                sign="-" if piece.sign < 0 else "",
                table=table,
                key=key,
                name=piece.name,
            )
        )
    return _WINDOW_SUMS.format(pieces="\nUNION ALL".join(branches) or _NO_PIECE)


def _cut_pieces(half: Half) -> str:
    kind = _kind(half)
    return "\nUNION ALL".join(
        _CUT_PIECES.format(
            level=f"cut_{level}",
            device=kind.device_id,
            energy=kind.energy.name,
            count="count(*)" if level == RAW else "sum(readings)",
            table=table,
            key=key,
            bounds=_RAW_BOUNDS if level == RAW else "",
        )
        for level, (table, key, _) in _SOURCES[half].items()
    )


def build_half(half: Half, pieces: Sequence[Piece]) -> str:
    """The statement of one half for a window of ``pieces`` (window_pieces.cover), whose
    pieces' signs are written into it; exposed for tests and EXPLAIN."""
    statement = _HALF.format(
        window_sums=_window_sums(half, pieces),
        link_device="vehicle_id" if half == "vehicle" else "meter_id",
        cut_pieces=_cut_pieces(half),
    )
    return statement + (_VEHICLES if half == "vehicle" else _METERS)


def window_params(window: tuple[datetime, datetime], pieces: Sequence[Piece]) -> dict[str, Any]:
    params: dict[str, Any] = {"window_start": window[0], "window_end": window[1]}
    for piece in pieces:
        params |= {f"{piece.name}_start": piece.start, f"{piece.name}_end": piece.end}
    return params


def cut_params(reads: LinkedReads, window: tuple[datetime, datetime]) -> dict[str, Any]:
    """The arrays of _HALF for one half's reads of its cut link segments."""
    params: dict[str, Any] = {
        "window_pair_vehicle_ids": [vehicle for vehicle, _ in reads.window_pairs],
        "window_pair_device_ids": [device for _, device in reads.window_pairs],
        "cut_raw_from": window[0],
        "cut_raw_to": window[1],
    }
    for level in (RAW, *(level.name for level in LEVELS)):
        chosen = [cut for cut in reads.pieces if cut.piece.level == level]
        params |= {
            f"cut_{level}_vehicle_ids": [cut.vehicle_id for cut in chosen],
            f"cut_{level}_device_ids": [cut.device_id for cut in chosen],
            f"cut_{level}_signs": [cut.piece.sign for cut in chosen],
            f"cut_{level}_starts": [cut.piece.start for cut in chosen],
            f"cut_{level}_ends": [cut.piece.end for cut in chosen],
        }
        if level == RAW and chosen:  # raw pieces may lie outside the window (subtracted)
            params["cut_raw_from"] = min(cut.piece.start for cut in chosen)
            params["cut_raw_to"] = max(cut.piece.end for cut in chosen)
    return params


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


# A vehicle's row of the fleet: vehicle_id, DC over the window, DC and DC readings while linked
# to a meter.
VehicleSums: TypeAlias = tuple[int, int, int, int]
# By vehicle_id, for linked vehicles: the vehicle's name, and AC and AC readings of its meters
# over its link segments.
AcSums: TypeAlias = dict[int, tuple[str, int, int]]


async def fleet_sums(
    pool: AsyncConnectionPool,
    window: tuple[datetime, datetime],
    page: Callable[[list[VehicleSums], AcSums], Collection[int]],
) -> list[dict[str, Any]]:
    """Every vehicle's sums over the window, given to ``page``; then, in the same snapshot,
    build_fleet_page's rows for the vehicles ``page`` picks (by vehicle_id). Rows come as plain
    tuples: for 10,000 vehicles, dicts cost ~15 ms more in Python."""
    now = datetime.now(UTC)
    pieces = cover(*window, now)
    params = window_params(window, pieces)
    # The vehicle and the meter halves run at once on two connections (two cores), in one
    # snapshot, exported by the first, so that they see the same readings as one statement did.
    async with pool.connection() as first, pool.connection() as second:
        async with first.pipeline():
            await first.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snapshot_cur = await first.execute(b"SELECT pg_export_snapshot()")
            cut_cur = await first.execute(_CUT_SEGMENTS, params, binary=True)
        [(snapshot,)] = await snapshot_cur.fetchall()
        cut = await cut_cur.fetchall()
        dc_reads = linked_reads((Segment(v, v, s, e) for v, _, s, e in cut), window, now)
        ac_reads = linked_reads((Segment(v, m, s, e) for v, m, s, e in cut), window, now)
        vehicles, ac_sums = await asyncio.gather(
            _run_half(
                first, build_half("vehicle", pieces), params | cut_params(dc_reads, window), None
            ),
            _ac_sums(
                second, build_half("meter", pieces), params | cut_params(ac_reads, window), snapshot
            ),
        )
        ids = list(page(vehicles, ac_sums))
        if not ids:
            return []
        # The page's vehicles in two parts, one on each connection (both in the snapshot).
        middle = len(ids) // 2
        statement = build_fleet_page().encode()
        page_params = {"f": window[0], "t": window[1], "vehicle": None}
        parts = await asyncio.gather(
            _page_rows(first, statement, page_params | {"ids": ids[:middle]}),
            _page_rows(second, statement, page_params | {"ids": ids[middle:]}),
        )
        return parts[0] + parts[1]


async def _ac_sums(
    conn: AsyncConnection[Any], statement: str, params: dict[str, Any], snapshot: str
) -> AcSums:
    """The meter half's rows, a vehicle's added (while the vehicle half may still run)."""
    sums: AcSums = {}
    for vehicle_id, name, energy, readings in await _run_half(conn, statement, params, snapshot):
        _, energy_before, readings_before = sums.get(vehicle_id, (name, 0, 0))
        sums[vehicle_id] = (name, energy_before + energy, readings_before + readings)
    return sums


async def _page_rows(
    conn: AsyncConnection[Any], statement: bytes, params: dict[str, Any]
) -> list[dict[str, Any]]:
    if not params["ids"]:
        return []
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(statement, params, prepare=False)
        return await cur.fetchall()


async def _run_half(
    conn: AsyncConnection[Any], statement: str, params: dict[str, Any], snapshot: str | None
) -> list[Any]:
    async with conn.cursor(binary=True) as cur:
        async with conn.pipeline():
            if snapshot is not None:
                await conn.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                )
            await conn.execute(b"SET LOCAL jit = off")  # as in rollup_queries.vehicle_sums
            # CTEs have no statistics: the planner guesses 200 devices of 10,000 and probes the
            # window sums in a nested loop (7.7 s instead of 0.4 s). Only the LATERAL reads of
            # the cut segments' pieces are nested loops, as they must be.
            await conn.execute(b"SET LOCAL enable_nestloop = off")
            # The two halves already keep both cores busy: parallel workers only compete.
            await conn.execute(b"SET LOCAL max_parallel_workers_per_gather = 0")
            # The CTEs' row estimates are far off: with the default 4 MB a sort spilled to disk.
            await conn.execute(b"SET LOCAL work_mem = '64MB'")
            # Never prepared: after five runs on one connection PostgreSQL may switch to a generic
            # plan, without the constant bounds (pruning, estimates): 4.1 s instead of 0.9 s.
            await cur.execute(statement.encode(), params, prepare=False)
        return await cur.fetchall()
