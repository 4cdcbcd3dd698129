"""Compaction of finished days (gateway/compaction.py) and the lifecycle task's schedule
(gateway/lifecycle.py): a finished day's indexes are rebuilt once, smaller, with what an
interrupted rebuild left dropped; and ingestion goes on while retention drops days and
compaction rebuilds them."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from gateway.compaction import compact, plan_compaction
from gateway.database import apply_schema, open_pool
from gateway.lifecycle import Lifecycle, run_lifecycle
from gateway.metrics import LifecycleMetrics
from gateway.partitions import Partitions
from gateway.writer import BatchWriter
from tests.http_helpers import meter_reading
from tests.lifecycle_helpers import (
    NOW,
    batch_of,
    bulk_day,
    cli,
    day,
    lifecycle_settings,
    noon,
    partition,
    partitions_of,
    seed_days,
)
from tests.support import count, query, wait_until

KINDS = ("meter", "vehicle")


@pytest.mark.parametrize(
    ("now", "interval", "hour", "wait"),
    [
        ("02:30:00", 3600, 3, 1801),  # the compaction hour comes first
        ("03:00:30", 3600, 3, 3600),  # in it: tomorrow's is far
        ("02:55:00", 600, 3, 301),
        ("23:30:00", 3600, 0, 1801),
        ("02:30:00", 3600, None, 3600),
    ],
)
def test_a_check_wakes_at_the_interval_or_the_compaction_hour(
    now: str, interval: float, hour: int | None, wait: float
) -> None:
    settings = lifecycle_settings("postgresql://unused").replace(
        retention_check_interval_s=interval, compaction_hour=hour
    )
    at = datetime.fromisoformat(f"2026-12-02T{now}+00:00")
    assert Lifecycle(settings, LifecycleMetrics()).wait_s(at) == wait


async def test_a_finished_day_is_compacted_once_smaller_and_leftovers_are_dropped(
    database_url: str,
) -> None:
    await apply_schema(database_url)
    await bulk_day(database_url, 2, devices=500, minutes=200)
    await bulk_day(database_url, 1, devices=50, minutes=10)
    await bulk_day(database_url, 0, devices=50, minutes=10)  # today: not finished
    noon_today = noon(0)
    leftover = f"{partition('meter', 2)}_pkey_ccnew"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):  # left invalid, as a cancelled one
            await conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {leftover} ON {partition('meter', 2)}"
                " (meter_id)".encode()
            )
        plan = await plan_compaction(conn, noon_today, grace_hours=2)
        # yesterday is due once it has been over for the grace period, not before
        early = await plan_compaction(conn, noon_today - timedelta(hours=11), grace_hours=2)
        # past the compaction hour no rebuild begins (what an interrupted one left still goes)
        assert await compact(conn, plan, until=datetime.now(UTC)) == []
    assert [d.table for d in plan.due] == [partition(k, a) for a in (2, 1) for k in KINDS]
    assert plan.leftovers == (leftover,)
    assert [d.table for d in early.due] == [partition(k, 2) for k in KINDS]
    metrics = LifecycleMetrics()
    sample = metrics.registry.get_sample_value
    lifecycle = Lifecycle(lifecycle_settings(database_url), metrics)
    run = await lifecycle.run_once(noon_today, compacting=True)
    meter = run.compacted[0]
    assert meter.day.table == partition("meter", 2)
    saved = meter.index_bytes_before - meter.index_bytes_after
    print(f"compaction of 100,000 rows: {meter.index_bytes_before} -> {meter.index_bytes_after}")
    assert saved > 0.15 * meter.index_bytes_before  # out of order: a quarter or so is slack
    assert sample("fleetgate_compaction_bytes_saved_total") == sum(
        max(0, c.bytes_saved) for c in run.compacted
    )
    assert sample("fleetgate_compaction_partitions_total") == 4
    assert await query(
        database_url,
        "SELECT device_kind, day, index_bytes_before - index_bytes_after FROM history_compaction"
        " WHERE day = %s ORDER BY 1",
        day(2),
    ) == [("meter", day(2), saved), ("vehicle", day(2), 0)]
    assert await query(database_url, "SELECT to_regclass(%s)", leftover) == [(None,)]
    again = await lifecycle.run_once(noon_today, compacting=True)
    assert again.compacted == []
    assert sample("fleetgate_compaction_pending") == 0


async def test_storage_prints_tiers_days_rows_and_what_the_next_run_drops(
    database_url: str,
) -> None:
    await seed_days(database_url, (20, 1))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"ANALYZE {partition('meter', 1)}".encode())
    status, out, err = await cli("storage", DATABASE_URL=database_url, RETENTION_RAW_DAYS="7")
    assert status == 0, err
    for line in (
        "raw history",
        "hourly rollups",
        "dead letters",
        f"oldest day kept: {day(20)}, newest: {day(1)}",
        "not analyzed",  # vehicle_reading of day 20 was never analyzed
        "estimate (pg_class.reltuples",
        f"  {partition('meter', 20)} (",
    ):
        assert line in out, line
    assert any(
        line.startswith(f"{day(1)}  meter") and line.split()[-2:] == ["2", "no"]
        for line in out.splitlines()
    ), out


@contextlib.asynccontextmanager
async def writing(database_url: str, late_age: int) -> AsyncIterator[list[tuple[float, float]]]:
    """A writer committing batches in a loop, as the gateway's does: 200 readings of today and
    one of the day ``late_age`` days ago each; yields (start, seconds) of every write so far."""
    timings: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def write_in_a_loop() -> None:
        async with open_pool(database_url, 2) as pool:
            writer = BatchWriter(pool, Partitions(pool), 0.5, lambda *_: None, open_enrolment=True)
            n = 0
            while not stop.is_set():
                at = NOW + timedelta(milliseconds=n)
                readings = [meter_reading(f"W-{i}", at, 0.1) for i in range(200)]
                late = noon(late_age) + timedelta(milliseconds=n)
                readings.append(meter_reading("W-late", late, 0.1))
                started = time.monotonic()
                await writer.write(batch_of(*readings))
                timings.append((started, time.monotonic() - started))
                n += 1

    loop = asyncio.ensure_future(write_in_a_loop())
    try:
        await asyncio.sleep(2.0)  # the writer's pace before
        yield timings
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await loop


def pace(timings: list[tuple[float, float]], start: float, end: float) -> tuple[float, float]:
    """The median and the longest write that started between ``start`` and ``end``."""
    durations = [t for at, t in timings if start <= at <= end]
    assert len(durations) > 10, durations
    return statistics.median(durations), max(durations)


async def test_writes_go_on_while_retention_drops_days_and_compaction_rebuilds_them(
    database_url: str,
) -> None:
    """One lifecycle run drops three days and rebuilds two big ones (one of them written into
    meanwhile) while the writer writes: no write waits for it."""
    await apply_schema(database_url)
    for age in (12, 11, 10):
        await bulk_day(database_url, age, devices=1000, minutes=100)
    for age in (3, 2):
        await bulk_day(database_url, age, devices=2000, minutes=300)  # 600,000 rows each
    await seed_days(database_url, (0,))
    settings = lifecycle_settings(database_url, RETENTION_RAW_DAYS="7", COMPACTION_GRACE_HOURS="0")
    async with writing(database_url, late_age=2) as timings:
        started = time.monotonic()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            run = await run_lifecycle(conn, settings, NOW, compacting=True)
        finished = time.monotonic()
    before, during = pace(timings, 0, started), pace(timings, started, finished)
    print(
        f"lifecycle run {finished - started:.2f} s ({len(run.retention.dropped)} partitions"
        " dropped; compacted: "
        + ", ".join(f"{c.day.table} {c.seconds:.2f} s" for c in run.compacted)
        + f"); writes before: median {before[0] * 1000:.1f} ms, max {before[1] * 1000:.1f} ms;"
        f" during: median {during[0] * 1000:.1f} ms, max {during[1] * 1000:.1f} ms"
    )
    assert [d.table for d in run.retention.dropped] == [
        partition(k, age) for age in (12, 11, 10) for k in KINDS
    ]
    assert {c.day.table for c in run.compacted} >= {partition("meter", 3), partition("meter", 2)}
    assert partition("meter", 12) not in await partitions_of(database_url)
    assert await query(
        database_url,
        "SELECT count(*) > 10 FROM meter_reading WHERE meter_id = ("
        "SELECT meter_id FROM meter WHERE name = 'W-late')",
    ) == [(True,)]
    # no write waited for a lock: the longest is within a few of the writer's own before
    assert during[1] < max(0.5, 5 * before[1])


async def test_a_drop_that_cannot_have_its_lock_gives_up_and_writers_wait_at_most_100_ms(
    database_url: str,
) -> None:
    """A reader holds history for 2.5 s: the drop waits 100 ms for the table's lock (writers
    queue behind it that long), gives up, and succeeds on a later try once the reader is done."""
    await seed_days(database_url, (20, 0))
    settings = lifecycle_settings(database_url, RETENTION_RAW_DAYS="7")
    metrics = LifecycleMetrics()

    async def read_for_a_while() -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute("SELECT count(*) FROM meter_reading")
            await asyncio.sleep(2.5)
            await conn.commit()

    async with writing(database_url, late_age=0) as timings:
        reading = asyncio.ensure_future(read_for_a_while())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            run = await run_lifecycle(conn, settings, NOW, compacting=False, metrics=metrics)
        finished = time.monotonic()
        await reading
    before, during = pace(timings, 0, started), pace(timings, started, finished)
    timeouts = metrics.registry.get_sample_value("fleetgate_retention_lock_timeouts_total")
    print(
        f"drop behind a 2.5 s reader: {timeouts:.0f} lock timeouts, run {finished - started:.2f}"
        f" s; writes before: median {before[0] * 1000:.1f} ms, max {before[1] * 1000:.1f} ms;"
        f" during: median {during[0] * 1000:.1f} ms, max {during[1] * 1000:.1f} ms"
    )
    assert [d.table for d in run.retention.dropped] == [partition(k, 20) for k in KINDS]
    assert (timeouts or 0) >= 1
    assert during[1] < 0.1 + max(0.4, 5 * before[1])  # the lock wait, and a batch with slack


async def test_a_compaction_cut_short_by_a_shutdown_is_cleaned_up_by_the_next(
    database_url: str,
) -> None:
    """REINDEX CONCURRENTLY waits for every older transaction: one held open keeps it waiting
    when the gateway stops. The task ends at once, the statement is cancelled in the server,
    and the invalid index it leaves is dropped by the next compaction."""
    await apply_schema(database_url)
    await bulk_day(database_url, 2, devices=100, minutes=100)
    settings = lifecycle_settings(database_url, COMPACTION_GRACE_HOURS="0").replace(
        compaction_hour=datetime.now(UTC).hour
    )
    lifecycle = Lifecycle(settings, LifecycleMetrics())
    stop = asyncio.Event()
    async with await psycopg.AsyncConnection.connect(database_url) as old:
        await old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await old.execute("SELECT count(*) FROM meter")  # a snapshot older than the REINDEX
        running = asyncio.ensure_future(lifecycle.run(stop))

        async def reindexing() -> bool:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'REINDEX%%'"
            return await count(database_url, sql) == 1

        await wait_until(reindexing, what="a REINDEX waiting for the old transaction")
        stop.set()
        stopped = time.monotonic()
        await asyncio.wait_for(running, 10)
        took = time.monotonic() - stopped
        await old.rollback()
    assert took < 2.0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        plan = await plan_compaction(conn, NOW, grace_hours=0)
        assert len(plan.leftovers) == 2  # the new primary key and BRIN index, invalid
        assert partition("meter", 2) in [d.table for d in plan.due]
    run = await lifecycle.run_once(NOW, compacting=True)
    assert partition("meter", 2) in [c.day.table for c in run.compacted]
    assert run.compaction.leftovers == plan.leftovers
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        assert (await plan_compaction(conn, NOW, grace_hours=0)).leftovers == ()
