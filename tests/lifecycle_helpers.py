"""Helpers of the data lifecycle tests (retention, compaction, storage): days of history by age,
batches as the gateway takes them, bulk days, one lifecycle run, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg

from gateway.batch import Batch, Received
from gateway.lifecycle import LifecycleRun, run_lifecycle
from gateway.readings import Limits, decode_message
from gateway.settings import Settings
from tests.http_helpers import meter_reading, vehicle_reading, write_readings
from tests.services import PROJECT
from tests.support import query

NOW: Final = datetime.now(UTC)
TODAY: Final = NOW.date()
# Late readings of any age get through decoding; what the writer does with them is tested.
LATE_LIMITS: Final = Limits(
    max_payload_bytes=1 << 20, max_future_skew=timedelta(days=1), max_age=timedelta(days=3650)
)


def day(age: int) -> date:
    """The UTC day ``age`` days before today."""
    return TODAY - timedelta(days=age)


def noon(age: int) -> datetime:
    return datetime.combine(day(age), datetime.min.time(), UTC) + timedelta(hours=12)


def partition(kind: str, age: int) -> str:
    return f"{kind}_reading_{day(age):%Y%m%d}"


async def seed_days(database_url: str, ages: Iterable[int]) -> None:
    """Two meter readings and one vehicle reading on each day, through the gateway's writer (so
    each day has its partitions and its hourly and daily rollups)."""
    readings = []
    for age in ages:
        at = noon(age)
        readings += [
            meter_reading("M-1", at, 1.0),
            meter_reading("M-1", at + timedelta(hours=1), 2.0),
            vehicle_reading("EV-1", at, 0.5),
        ]
    await write_readings(database_url, readings)


async def partitions_of(database_url: str) -> set[str]:
    rows = await query(
        database_url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent IN ('meter_reading'::regclass, 'vehicle_reading'::regclass)",
    )
    return {name for (name,) in rows}


def batch_of(*payloads: dict[str, Any] | list[dict[str, Any]]) -> Batch:
    """One message per payload (a reading, or an array of them), as the gateway takes them."""
    batch = Batch()
    now = datetime.now(UTC)
    for payload in payloads:
        first = payload[0] if isinstance(payload, list) else payload
        kind = "meter" if "meterId" in first else "vehicle"
        topic = f"fleet/{kind}/{first[kind + 'Id']}"
        raw = json.dumps(payload).encode()
        decoded = decode_message(topic, raw, now, LATE_LIMITS)
        assert not decoded.rejects, decoded.rejects
        batch.add(Received(topic, raw, now, time.monotonic(), 0, 1, 0, decoded))
    return batch


def lifecycle_settings(database_url: str, **env: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": database_url, **env})


async def run_once(
    database_url: str, *, compacting: bool = False, now: datetime | None = None, **env: str
) -> LifecycleRun:
    """One run of retention (and compaction), with RETENTION_*/COMPACTION_* from ``env``."""
    settings = lifecycle_settings(database_url, **env)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await run_lifecycle(conn, settings, now or NOW, compacting=compacting)


async def bulk_day(database_url: str, age: int, devices: int, minutes: int) -> None:
    """A day of meter readings, one a minute per device, written in arrival order (time, then
    device) as a gateway writes them: its primary key ends up with slack, as in production.
    The vehicle partition of the day is made too (empty)."""
    start = datetime.combine(day(age), datetime.min.time(), UTC)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for table in ("meter_reading", "vehicle_reading"):
            await conn.execute(
                "SELECT fleetgate_ensure_partition(%s::regclass, %s)", (table, day(age))
            )
        await conn.execute(
            """INSERT INTO meter_reading (ts, consumed_ac_mwh, meter_id, voltage)
               SELECT %(start)s + m * interval '1 minute', 1000 + m, d, 230.5
               FROM generate_series(0, %(minutes)s - 1) m, generate_series(1, %(devices)s) d
               ORDER BY m, d""",
            {"start": start, "minutes": minutes, "devices": devices},
        )


async def cli(*args: str, **env: str) -> tuple[int, str, str]:
    """``python -m gateway ARGS`` with ``env`` added: status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=PROJECT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def refused(database_url: str, sql: str) -> bool:
    """True if the database refuses ``sql`` for want of a right; it runs otherwise."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        try:
            await conn.execute(sql.encode())
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False
