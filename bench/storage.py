"""Bytes per history row of a day (table + primary key) before and after the gateway's compaction,
beside the floor of PostgreSQL's layout (bench/storage_floor.py); and how long a retention run and
a compaction take while a writer ingests, with the writer's longest batch meanwhile.

Run: .venv/bin/python -m bench.storage [--quick] [--devices N] [--minutes N] [--old-days N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg

from bench.harness import database_ms, loop_ms, machine
from bench.storage_floor import HOW, Floor, floor_of
from gateway.compaction import compact, plan_compaction
from gateway.database import Partitions, apply_schema, open_pool
from gateway.retention import RetentionPolicy, apply_retention, plan_retention
from gateway.writer import BatchWriter
from tests.http_helpers import meter_reading, vehicle_reading
from tests.lifecycle_helpers import batch_of
from tests.services import Postgres

KINDS: Final = ("meter", "vehicle")
RAW_DAYS: Final = 7  # retention keeps a week; the old days are older
FIRST_OLD_AGE: Final = 10
BATCH: Final = 1000  # the gateway's default BATCH_SIZE: single-reading messages per batch
# One reading a minute per device, in arrival order (minute, then device), as the gateway writes
# them: the primary key (device, ts) is filled out of order.
_DAY_ROWS: Final = {
    "meter": """
        INSERT INTO meter_reading (ts, consumed_ac_mwh, meter_id, voltage)
        SELECT %(start)s + m * interval '1 minute', 250000 + m, d, 230.5
        FROM generate_series(0, %(minutes)s - 1) m, generate_series(1, %(devices)s) d
        ORDER BY m, d""",
    "vehicle": """
        INSERT INTO vehicle_reading (ts, delivered_dc_mwh, vehicle_id, soc, battery_temp)
        SELECT %(start)s + m * interval '1 minute', 230000 + m, d, 55.5, 31.5
        FROM generate_series(0, %(minutes)s - 1) m, generate_series(1, %(devices)s) d
        ORDER BY m, d""",
}
_SIZES: Final = b"""
SELECT pg_relation_size(c.oid), pg_relation_size(x.indexrelid),
       pg_table_size(c.oid) - pg_relation_size(c.oid)
         + pg_indexes_size(c.oid) - pg_relation_size(x.indexrelid)
FROM pg_class c JOIN pg_index x ON x.indrelid = c.oid AND x.indisprimary
WHERE c.oid = %s::regclass
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    heap: int  # main fork
    pkey: int
    other: int  # free-space and visibility maps, the BRIN index


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    name: str
    seconds: float
    what: str
    start: float
    end: float


def partition(kind: str, day: date) -> str:
    return f"{kind}_reading_{day:%Y%m%d}"


async def write_day(
    conn: psycopg.AsyncConnection[Any], day: date, devices: int, minutes: int
) -> None:
    start = datetime.combine(day, datetime.min.time(), UTC)
    for kind in KINDS:
        await conn.execute(
            "SELECT fleetgate_ensure_partition(%s::regclass, %s)", (f"{kind}_reading", day)
        )
        await conn.execute(
            _DAY_ROWS[kind], {"start": start, "minutes": minutes, "devices": devices}
        )


async def sizes(conn: psycopg.AsyncConnection[Any], table: str) -> Sizes:
    cur = await conn.execute(_SIZES, (table,))
    heap, pkey, other = await cur.fetchone() or (0, 0, 0)
    return Sizes(heap, pkey, other)


@contextlib.asynccontextmanager
async def ingesting(url: str) -> AsyncIterator[list[tuple[float, float]]]:
    """The gateway's BatchWriter committing batches of BATCH single readings (half meters, half
    vehicles) of today in a loop; yields (start, seconds) of every batch so far."""
    timings: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def write_in_a_loop() -> None:
        async with open_pool(url, 2) as pool:
            writer = BatchWriter(pool, Partitions(pool), 0.5, lambda *_: None, open_enrolment=True)
            base = datetime.now(UTC).replace(microsecond=0)
            n = 0
            while not stop.is_set():
                at = base + timedelta(milliseconds=n)
                half = BATCH // 2
                batch = batch_of(
                    *(meter_reading(f"W-M{i}", at, 0.1 * n) for i in range(half)),
                    *(vehicle_reading(f"W-V{i}", at, 0.1 * n) for i in range(half)),
                )
                started = time.monotonic()
                await writer.write(batch)
                timings.append((started, time.monotonic() - started))
                n += 1

    loop = asyncio.ensure_future(write_in_a_loop())
    try:
        await asyncio.sleep(3.0)  # the writer's pace before
        yield timings
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await loop


def overlapping(timings: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """The batches that were being written at any time between ``start`` and ``end``."""
    return [t for at, t in timings if at <= end and at + t >= start]


async def measure(url: str, devices: int, minutes: int, old_days: int, old_minutes: int) -> None:
    await apply_schema(url)
    today = datetime.now(UTC).date()
    day = today - timedelta(days=1)  # finished: compaction takes it
    began = time.monotonic()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for age in range(FIRST_OLD_AGE, FIRST_OLD_AGE + old_days):
            await write_day(conn, today - timedelta(days=age), devices, old_minutes)
        await write_day(conn, day, devices, minutes)
        tables = [partition(kind, day) for kind in KINDS]
        await conn.execute(f"VACUUM ANALYZE {', '.join(tables)}".encode())  # as autovacuum would
        before = {t: await sizes(conn, t) for t in tables}
        floors = {t: await floor_of(conn, t) for t in tables}
    rows = devices * minutes
    print(
        f"{machine()}; shared, noisy machine: compare within a run. Loop {loop_ms():.0f} ms,"
        f" database {database_ms(url):.0f} ms (lower is faster)"
    )
    print(
        f"data set: {old_days} old days x {devices:,} devices x {old_minutes} min per kind, and"
        f" {day} with {rows:,} rows per kind ({devices:,} devices x {minutes} min, arrival"
        f" order), written in {time.monotonic() - began:.1f} s"
    )

    windows: list[Window] = []
    async with ingesting(url) as timings:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            policy = RetentionPolicy(RAW_DAYS, 0, 0, 0, 0)
            started = time.monotonic()
            plan = await plan_retention(conn, policy, datetime.now(UTC))
            done = await apply_retention(conn, plan)
            end = time.monotonic()
            dropped = sum(d.total_bytes for d in done.dropped) / 2**20
            windows.append(
                Window(
                    "retention run",
                    end - started,
                    f"{len(done.dropped)} partitions dropped ({dropped:.0f} MB),"
                    f" {len(done.postponed)} postponed",
                    started,
                    end,
                )
            )
            await asyncio.sleep(1.0)
            started = time.monotonic()
            due = await plan_compaction(conn, datetime.now(UTC), 0, plan.history_kept_from)
            compacted = await compact(conn, due)
            end = time.monotonic()
            each = ", ".join(f"{c.day.table} {c.seconds:.1f} s" for c in compacted)
            windows.append(Window("compaction", end - started, each, started, end))
        first_window = windows[0].start
        baseline = [t for at, t in timings if at + t < first_window]

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        after = {t: await sizes(conn, t) for t in tables}
    report(tables, rows, before, after, floors)
    median = statistics.median(baseline) * 1000
    print(
        f"\nwhile a writer commits batches of {BATCH} readings in a loop (the gateway's"
        f" BatchWriter; before: {len(baseline)} batches, median {median:.0f} ms,"
        f" longest {max(baseline) * 1000:.0f} ms):"
    )
    print("| run | took | writer's batches during: count, median, longest | what |")
    print("| --- | --- | --- | --- |")
    for w in windows:
        during = overlapping(timings, w.start, w.end)
        print(
            f"| {w.name} | {w.seconds:.2f} s | {len(during)},"
            f" {statistics.median(during) * 1000:.0f} ms, {max(during) * 1000:.0f} ms"
            f" | {w.what} |"
        )


def report(
    tables: list[str],
    rows: int,
    before: dict[str, Sizes],
    after: dict[str, Sizes],
    floors: dict[str, Floor],
) -> None:
    print(
        "\nbytes per row of the day (table = heap main fork, PK = primary-key index);"
        " compaction = gateway.compaction.compact (REINDEX TABLE CONCURRENTLY)"
    )
    print(
        "| table | table | PK | total | PK compacted | total compacted"
        " | floor: table + PK = total |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in tables:
        b, a, f = before[t], after[t], floors[t]
        print(
            f"| `{t.rsplit('_', 1)[0]}` | {b.heap / rows:.1f} B | {b.pkey / rows:.1f} B"
            f" | {(b.heap + b.pkey) / rows:.1f} B | {a.pkey / rows:.1f} B"
            f" | {(a.heap + a.pkey) / rows:.1f} B | {f.heap_bytes:.1f} + {f.index_bytes:.1f}"
            f" = {f.heap_bytes + f.index_bytes:.1f} B |"
        )
    for t in tables:
        f = floors[t]
        print(
            f"{t}: heap tuple {f.heap_tuple} B + 4, {f.heap_per_page} a page; index tuple"
            f" {f.index_tuple} B + 4, {f.index_per_leaf} a leaf; maps and BRIN"
            f" {after[t].other / rows:.2f} B/row more"
        )
    print(HOW)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run (~30 s)")
    parser.add_argument("--devices", type=int, help="devices per kind (2,000; --quick 1,000)")
    parser.add_argument("--minutes", type=int, help="readings per device of the day (600)")
    parser.add_argument("--old-days", type=int, default=3, help="days for retention to drop")
    args = parser.parse_args()
    devices = args.devices or (1000 if args.quick else 2000)
    minutes = args.minutes or (60 if args.quick else 600)
    old_minutes = 30 if args.quick else 200
    server = Postgres()
    try:
        asyncio.run(measure(server.url, devices, minutes, args.old_days, old_minutes))
    finally:
        server.close()


if __name__ == "__main__":
    main()
