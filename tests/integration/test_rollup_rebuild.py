"""Rollups rebuilt from history (gateway/rollup_rebuild.py, ``python -m gateway
rebuild-rollups``) are exactly the rollups the gateway's writer kept, and only where asked."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from gateway.rollup_rebuild import rebuild_rollups
from tests.http_helpers import meter_reading, vehicle_reading, write_readings
from tests.services import PROJECT
from tests.support import LoginAs, query

DAY0: Final = datetime(2026, 1, 10, tzinfo=UTC)
DAYS: Final = 3
# (table, key) of every rollup level
ROLLUPS: Final = (
    ("meter_hourly", "meter_id, hour"),
    ("vehicle_hourly", "vehicle_id, hour"),
    ("meter_daily", "meter_id, day"),
    ("vehicle_daily", "vehicle_id, day"),
)
Rollups = dict[str, list[tuple[Any, ...]]]


def readings(seed: int = 16) -> list[dict[str, Any]]:
    """Readings of three meters and three vehicles over three UTC days, with duplicates and out
    of order."""
    rng = random.Random(seed)
    readings = []
    for _ in range(900):
        at = DAY0 + timedelta(seconds=rng.randrange(DAYS * 86400))
        n = rng.randrange(3)
        readings.append(
            meter_reading(
                f"M-{n}", at, round(rng.uniform(0, 2), 4), round(rng.uniform(200, 250), 1)
            )
        )
        readings.append(
            vehicle_reading(
                f"EV-{n}", at, round(rng.uniform(0, 2), 4), round(rng.uniform(-10, 60), 1)
            )
        )
    readings += rng.sample(readings, 200)
    rng.shuffle(readings)
    return readings


async def ingest(database_url: str) -> None:
    """The readings, written by the gateway's writer in batches."""
    await write_readings(database_url, readings(), per_batch=97)


async def rollups(database_url: str) -> Rollups:
    return {
        table: await query(database_url, f"SELECT * FROM {table} ORDER BY {key}")
        for table, key in ROLLUPS
    }


async def rebuild(database_url: str, start: datetime, end: datetime) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await rebuild_rollups(conn, start, end)


async def corrupt(database_url: str, sql: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(sql.encode())


async def test_a_rebuild_gives_back_every_rollup_the_writer_kept_and_a_second_changes_nothing(
    database_url: str,
) -> None:
    await ingest(database_url)
    kept = await rollups(database_url)
    assert all(len(rows) >= DAYS for rows in kept.values())
    await corrupt(
        database_url,
        f"""
        UPDATE meter_hourly SET consumed_ac_mwh = consumed_ac_mwh + 1, readings = 99,
                                voltage_max = 999
        WHERE meter_id = 1;
        DELETE FROM vehicle_hourly WHERE vehicle_id = 2;
        UPDATE vehicle_hourly SET battery_temp_sum = 0, battery_temp_min = -99;
        DELETE FROM meter_daily WHERE day = '{DAY0:%Y-%m-%d}';
        UPDATE vehicle_daily SET delivered_dc_mwh = 0, readings = 3;
        -- an hour and a day without history
        INSERT INTO meter_hourly (meter_id, hour, consumed_ac_mwh, readings, voltage_min,
                                  voltage_max)
        VALUES (1, '{DAY0 + timedelta(days=DAYS, hours=5):%Y-%m-%d %H:%M}+00', 5, 1, 1, 1);
        INSERT INTO vehicle_daily (vehicle_id, day, delivered_dc_mwh, readings)
        VALUES (3, '{DAY0 + timedelta(days=DAYS):%Y-%m-%d}', 5, 1);""",
    )
    assert await rollups(database_url) != kept
    await rebuild(database_url, DAY0, DAY0 + timedelta(days=DAYS + 1))
    assert await rollups(database_url) == kept
    await rebuild(database_url, DAY0, DAY0 + timedelta(days=DAYS + 1))
    assert await rollups(database_url) == kept


async def test_a_range_within_days_rebuilds_only_its_hours_and_the_days_it_touches(
    database_url: str,
) -> None:
    await ingest(database_url)
    kept = await rollups(database_url)
    await corrupt(
        database_url,
        """
        UPDATE meter_hourly SET readings = readings + 1000;
        UPDATE vehicle_hourly SET readings = readings + 1000;
        UPDATE meter_daily SET readings = readings + 1000;
        UPDATE vehicle_daily SET readings = readings + 1000;""",
    )
    start = DAY0 + timedelta(hours=12, minutes=30)  # in hour 12 of the first day
    end = DAY0 + timedelta(days=1, hours=6)  # to 06:00 of the second day
    await rebuild(database_url, start, end)
    rebuilt = await rollups(database_url)
    in_range = {
        "hourly": (DAY0 + timedelta(hours=12), end),
        "daily": (DAY0, DAY0 + timedelta(days=2)),
    }
    untouched = 0
    for table, _ in ROLLUPS:
        low, high = in_range[table.split("_")[1]]
        for before, after in zip(kept[table], rebuilt[table], strict=True):
            if low <= before[1] < high:
                assert after == before
            else:
                assert after == (*before[:3], before[3] + 1000, *before[4:])
                untouched += 1
    assert untouched > 100


async def test_rebuilds_while_the_writer_writes_neither_lose_nor_double_a_reading(
    database_url: str,
) -> None:
    await ingest(database_url)
    writing = asyncio.create_task(write_readings(database_url, readings(seed=17), per_batch=23))
    rebuilds = 0
    while not writing.done() or rebuilds < 3:
        await rebuild(database_url, DAY0, DAY0 + timedelta(days=DAYS))
        rebuilds += 1
    await writing
    written = await rollups(database_url)
    await rebuild(database_url, DAY0, DAY0 + timedelta(days=DAYS))
    assert await rollups(database_url) == written
    assert await query(database_url, "SELECT count(*) FROM vehicle_reading") == await query(
        database_url, "SELECT sum(readings)::bigint FROM vehicle_daily"
    )


async def run_command(database_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "rebuild-rollups",
        *args,
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_owner_rebuilds_from_the_command_line_and_the_gateways_role_is_told_who_may(
    database_url: str, login_as: LoginAs
) -> None:
    await ingest(database_url)
    kept = await rollups(database_url)
    await corrupt(database_url, "UPDATE meter_daily SET consumed_ac_mwh = 0")
    corrupted = await rollups(database_url)
    gateway_url = login_as(database_url, "fleetgate_gateway")
    status, out, error = await run_command(
        gateway_url, "--from", f"{DAY0:%Y-%m-%d}", "--to", f"{DAY0 + timedelta(days=DAYS):%Y-%m-%d}"
    )
    assert (status, out) == (1, "")
    [line] = error.splitlines()
    assert line.startswith("fleetgate: rebuild-rollups failed: '")
    assert "may not rebuild rollups (permission denied for table" in line
    assert "of the schema's owner (a member of fleetgate_owner) or of a superuser" in line
    assert await rollups(database_url) == corrupted
    owner_url = login_as(database_url, "fleetgate_owner")
    status, out, error = await run_command(
        owner_url, "--from", f"{DAY0:%Y-%m-%d}", "--to", f"{DAY0 + timedelta(days=DAYS):%Y-%m-%d}"
    )
    assert (status, error) == (0, "")
    rows = {table: len(kept[table]) for table, _ in ROLLUPS}
    assert out == (
        "fleetgate: rollups rebuilt from history, hours 2026-01-10 00:00 to 2026-01-13 00:00 UTC,"
        f" days 2026-01-10 to 2026-01-12: meter {rows['meter_hourly']} hourly,"
        f" {rows['meter_daily']} daily rows; vehicle {rows['vehicle_hourly']} hourly,"
        f" {rows['vehicle_daily']} daily rows\n"
    )
    assert await rollups(database_url) == kept
    status, _, error = await run_command(owner_url, "--from", "2026-01-12", "--to", "2026-01-11")
    assert status == 2
    assert error.splitlines()[-1].endswith("--to must be later than --from")
