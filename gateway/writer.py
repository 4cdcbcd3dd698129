"""Writes a batch in one transaction: binary COPY into staging, then history, live rows and
dead letters. The write side's SQL lives here."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway import registry
from gateway.batch import Batch, is_refusal, refused_by_database
from gateway.database import Partitions
from gateway.rollup_slots import (
    HOUR_OF_DAY,
    HOURS,
    SLOT_OF_TS,
    additions,
    hour_columns,
    part_pivot,
    slot_columns,
    slot_pivot,
)
from gateway.waiting import backoff_delay

logger = logging.getLogger(__name__)

_COPY_METERS: Final = (
    "COPY meter_stage (name, ts, consumed_ac_mwh, voltage, received_at) FROM STDIN (FORMAT BINARY)"
)
_METER_TYPES: Final = ["text", "timestamptz", "int8", "float4", "timestamptz"]
_COPY_VEHICLES: Final = (
    "COPY vehicle_stage (name, ts, delivered_dc_mwh, soc, battery_temp, received_at)"
    " FROM STDIN (FORMAT BINARY)"
)
_VEHICLE_TYPES: Final = ["text", "timestamptz", "int8", "float4", "float4", "timestamptz"]
_COPY_DEAD_LETTERS: Final = (
    "COPY dead_letter (received_at, topic, device_kind, device_name, reason, payload,"
    " payload_bytes) FROM STDIN (FORMAT BINARY)"
)
_DEAD_LETTER_TYPES: Final = ["timestamptz", "text", "text", "text", "text", "bytea", "int4"]
# One row per device and minute: the first batch inserts it with its sample, later ones add.
_COUNT_OVERFLOW: Final = b"""
INSERT INTO dead_letter_overflow AS o (window_start, device_kind, device_name, dead_letters,
    last_received_at, sample_reason, sample_payload, sample_bytes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (device_kind, device_name, window_start) DO UPDATE SET
    dead_letters = o.dead_letters + EXCLUDED.dead_letters,
    last_received_at = greatest(o.last_received_at, EXCLUDED.last_received_at)
"""

# New devices only: ON CONFLICT alone would draw an identity value for every staged row.
_REGISTER_METERS: Final = """
INSERT INTO meter (name)
SELECT DISTINCT s.name FROM meter_stage s
WHERE NOT EXISTS (SELECT 1 FROM meter m WHERE m.name = s.name)
ON CONFLICT (name) DO NOTHING
"""
# Daily rollups, with each hour's sums, from the hour groups of the same statement, for either
# kind.
_ROLLED_DAILY: Final = """rolled_daily AS (
    INSERT INTO {kind}_daily AS d ({device}, day, {energy}, readings, {hour_columns})
    SELECT {device}, date_bin('1 day', hour, '2000-01-01 00:00:00+00') AS day,
           sum({energy})::bigint, sum(readings)::int, {hour_pivot}
    FROM (SELECT {device}, hour, {energy}, readings, {hour_of_day} AS hour_of_day FROM hours) h
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT ({device}, day) DO UPDATE SET
        {energy} = d.{energy} + EXCLUDED.{energy},
        readings = d.readings + EXCLUDED.readings,
        {hour_additions}
)"""


def _rollup_fragments(kind: str, device: str, energy: str) -> dict[str, str]:
    """What the two history statements below share, filled in for one kind."""
    daily = {
        "kind": kind,
        "device": device,
        "energy": energy,
        "hour_columns": hour_columns(),
        "hour_pivot": part_pivot("hour", HOURS, energy, key="hour_of_day"),
        "hour_of_day": HOUR_OF_DAY,
        "hour_additions": additions("d", hour_columns()),
    }
    return {
        "slot_columns": slot_columns(),
        "slot_pivot": slot_pivot(),
        "slot_of_ts": SLOT_OF_TS,
        "slot_additions": additions("h", slot_columns()),
        "rolled_daily": _ROLLED_DAILY.format(**daily),
    }


# History and its rollups (hourly with 10-minute slots, daily with each hour's sums) in one
# statement: the rollups add up only the rows that were really inserted, so a duplicate never
# counts twice. Rows are taken in key order so that two gateways updating the same rollup rows
# lock them in the same order (no deadlock).
_INSERT_METER_HISTORY: Final = """
WITH inserted AS (
    INSERT INTO meter_reading (ts, consumed_ac_mwh, meter_id, voltage)
    SELECT s.ts, s.consumed_ac_mwh, m.meter_id, s.voltage
    FROM meter_stage s JOIN meter m ON m.name = s.name
    ON CONFLICT DO NOTHING
    RETURNING meter_id, ts, consumed_ac_mwh, voltage
), slots AS (
    -- by slot first: an array of readings gives a few slots, and the pivot below reads those
    SELECT meter_id, date_bin('1 hour', ts, '2000-01-01 00:00:00+00') AS hour,
           {slot_of_ts} AS slot, sum(consumed_ac_mwh)::bigint AS energy, count(*)::int AS readings,
           min(voltage) AS voltage_min, max(voltage) AS voltage_max
    FROM inserted GROUP BY 1, 2, 3
), hours AS (
    SELECT meter_id, hour, sum(energy)::bigint AS consumed_ac_mwh, sum(readings)::int AS readings,
           min(voltage_min) AS voltage_min, max(voltage_max) AS voltage_max, {slot_pivot}
    FROM slots GROUP BY 1, 2
), rolled AS (
    INSERT INTO meter_hourly AS h
        (meter_id, hour, consumed_ac_mwh, readings, voltage_min, voltage_max, {slot_columns})
    SELECT * FROM hours ORDER BY 1, 2
    ON CONFLICT (meter_id, hour) DO UPDATE SET
        consumed_ac_mwh = h.consumed_ac_mwh + EXCLUDED.consumed_ac_mwh,
        readings = h.readings + EXCLUDED.readings,
        voltage_min = least(h.voltage_min, EXCLUDED.voltage_min),
        voltage_max = greatest(h.voltage_max, EXCLUDED.voltage_max),
        {slot_additions}
), {rolled_daily}
SELECT count(*) FROM inserted
""".format(**_rollup_fragments("meter", "meter_id", "consumed_ac_mwh"))
# The latest staged reading per device replaces the live one only if it is newer: readings
# that arrive late after an outage go to history but never turn the live state back.
_UPDATE_METER_LIVE: Final = """
UPDATE meter m
SET ts = s.ts, received_at = s.received_at, consumed_ac_mwh = s.consumed_ac_mwh,
    voltage = s.voltage
FROM (SELECT DISTINCT ON (name) * FROM meter_stage ORDER BY name, ts DESC) s
WHERE m.name = s.name AND (m.ts IS NULL OR m.ts < s.ts)
"""
_REGISTER_VEHICLES: Final = """
INSERT INTO vehicle (name)
SELECT DISTINCT s.name FROM vehicle_stage s
WHERE NOT EXISTS (SELECT 1 FROM vehicle v WHERE v.name = s.name)
ON CONFLICT (name) DO NOTHING
"""
_INSERT_VEHICLE_HISTORY: Final = """
WITH inserted AS (
    INSERT INTO vehicle_reading (ts, delivered_dc_mwh, vehicle_id, soc, battery_temp)
    SELECT s.ts, s.delivered_dc_mwh, v.vehicle_id, s.soc, s.battery_temp
    FROM vehicle_stage s JOIN vehicle v ON v.name = s.name
    ON CONFLICT DO NOTHING
    RETURNING vehicle_id, ts, delivered_dc_mwh, battery_temp
), slots AS (
    SELECT vehicle_id, date_bin('1 hour', ts, '2000-01-01 00:00:00+00') AS hour,
           {slot_of_ts} AS slot, sum(delivered_dc_mwh)::bigint AS energy, count(*)::int AS readings,
           sum(battery_temp::double precision) AS battery_temp_sum,
           min(battery_temp) AS battery_temp_min, max(battery_temp) AS battery_temp_max
    FROM inserted GROUP BY 1, 2, 3
), hours AS (
    SELECT vehicle_id, hour, sum(energy)::bigint AS delivered_dc_mwh,
           sum(readings)::int AS readings, sum(battery_temp_sum) AS battery_temp_sum,
           min(battery_temp_min) AS battery_temp_min, max(battery_temp_max) AS battery_temp_max,
           {slot_pivot}
    FROM slots GROUP BY 1, 2
), rolled AS (
    INSERT INTO vehicle_hourly AS h (vehicle_id, hour, delivered_dc_mwh, readings,
                                     battery_temp_sum, battery_temp_min, battery_temp_max,
                                     {slot_columns})
    SELECT * FROM hours ORDER BY 1, 2
    ON CONFLICT (vehicle_id, hour) DO UPDATE SET
        delivered_dc_mwh = h.delivered_dc_mwh + EXCLUDED.delivered_dc_mwh,
        readings = h.readings + EXCLUDED.readings,
        battery_temp_sum = h.battery_temp_sum + EXCLUDED.battery_temp_sum,
        battery_temp_min = least(h.battery_temp_min, EXCLUDED.battery_temp_min),
        battery_temp_max = greatest(h.battery_temp_max, EXCLUDED.battery_temp_max),
        {slot_additions}
), {rolled_daily}
SELECT count(*) FROM inserted
""".format(**_rollup_fragments("vehicle", "vehicle_id", "delivered_dc_mwh"))
_UPDATE_VEHICLE_LIVE: Final = """
UPDATE vehicle v
SET ts = s.ts, received_at = s.received_at, soc = s.soc, delivered_dc_mwh = s.delivered_dc_mwh,
    battery_temp = s.battery_temp
FROM (SELECT DISTINCT ON (name) * FROM vehicle_stage ORDER BY name, ts DESC) s
WHERE v.name = s.name AND (v.ts IS NULL OR v.ts < s.ts)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class _KindStatements:
    """What writing one kind of reading takes, in order."""

    copy: str
    types: list[str]
    register: str
    insert_history: str
    update_live: str


_METER_STATEMENTS: Final = _KindStatements(
    _COPY_METERS, _METER_TYPES, _REGISTER_METERS, _INSERT_METER_HISTORY, _UPDATE_METER_LIVE
)
_VEHICLE_STATEMENTS: Final = _KindStatements(
    _COPY_VEHICLES,
    _VEHICLE_TYPES,
    _REGISTER_VEHICLES,
    _INSERT_VEHICLE_HISTORY,
    _UPDATE_VEHICLE_LIVE,
)

# Worth retrying as they are: the database or the network is the problem, not the data.
_TRANSIENT: Final = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    psycopg.errors.TransactionRollback,
)
# The message is what the database refuses. Any other database error is permanent: our
# statements or the schema are wrong (a missing table, a revoked right), so retrying as they are
# will not help, but re-applying the schema may; the batch is kept meanwhile.
_REFUSED: Final = (psycopg.DataError, psycopg.IntegrityError)


def _is_the_messages_fault(error: Exception) -> bool:
    """Refused by the database, or our own code failed on the data (not on the database)."""
    return isinstance(error, _REFUSED) or not isinstance(error, psycopg.Error | PoolTimeout)


@dataclasses.dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed batch changed."""

    messages: int = 0
    readings: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0  # kept whole
    dead_letters_counted: int = 0  # past the cap: counted in dead_letter_overflow

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            *(
                a + b
                for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
            )
        )


async def _no_repair() -> None:
    pass


def _no_count(_: Exception) -> None:
    pass


class BatchWriter:
    """Commits batches, retrying through database outages; never gives up on a batch."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        partitions: Partitions,
        retry_max_delay_s: float,
        on_committed: Callable[[Batch, WriteResult], None],
        on_permanent_error: Callable[[], Awaitable[None]] = _no_repair,
        *,
        open_enrolment: bool = False,
        on_retry: Callable[[Exception], None] = _no_count,
    ):
        self._pool = pool
        self._partitions = partitions
        self._retry_max_delay_s = retry_max_delay_s
        self._on_committed = on_committed
        self._on_permanent_error = on_permanent_error  # counts it, repairs what it can
        self._open_enrolment = open_enrolment
        self._on_retry = on_retry  # told of each failed attempt that will be tried again
        self.failing: Exception | None = None  # why the last attempt failed, while it fails
        # How long the latest committed transaction took, from taking a connection to its
        # commit; read by on_committed (not the time the batch waited, nor failed attempts).
        self.last_commit_s = 0.0

    async def write(self, batch: Batch) -> WriteResult:
        """Write until committed. A batch the database refuses is split to find the culprit,
        which becomes a dead letter; everything else is stored."""
        attempt = 0
        while True:
            try:
                await self._partitions.ensure(batch.reading_days())
                result = await self._write_once(batch)
            except _TRANSIENT as exc:
                self.failing = exc
                self._on_retry(exc)
                delay = backoff_delay(attempt, self._retry_max_delay_s)
                attempt += 1
                logger.warning(
                    "database unavailable, batch of %d kept, retrying in %.2f s: %s",
                    len(batch),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                if not _is_the_messages_fault(exc):  # permanent: repair, retry, never ack
                    self._on_retry(exc)
                    delay = backoff_delay(attempt, self._retry_max_delay_s)
                    attempt += 1
                    await self._permanent_error(batch, exc, delay)
                    continue
                self._partitions.forget()  # a partition may have been dropped under us
                return await self._write_refused(batch, exc)
            self.failing = None
            self._on_committed(batch, result)
            return result

    async def _permanent_error(self, batch: Batch, error: Exception, delay: float) -> None:
        self.failing = error
        logger.error(
            "database refused the gateway's statements for a batch of %d (%s: %s); "
            "the batch is kept unacknowledged, the schema is re-applied, retrying in %.1f s",
            len(batch),
            type(error).__name__,
            str(error).strip(),
            delay,
        )
        self._partitions.forget()
        try:
            await self._on_permanent_error()
        except (psycopg.Error, OSError) as exc:
            logger.error("re-applying the schema failed: %s", exc)  # noqa: TRY400
        await asyncio.sleep(delay)

    async def _write_refused(self, batch: Batch, error: Exception) -> WriteResult:
        if len(batch) > 1:
            logger.warning(
                "database refused a batch of %d (%s); writing its messages one by one",
                len(batch),
                error,
            )
            total = WriteResult()
            for single in batch.split():
                total += await self.write(single)
            return total
        # One message: is it the partition we thought existed, or the data? Retry once with
        # fresh partitions before blaming the message.
        try:
            await self._partitions.ensure(batch.reading_days())
            result = await self._write_once(batch)
        except Exception as exc:
            if not _is_the_messages_fault(exc):
                return await self.write(batch)  # retried there
            message = batch.messages[0]
            if is_refusal(message):  # cannot happen with sanitised text; never loop on it
                logger.exception(
                    "database refused even the dead letter of %r; payload %r "
                    "acknowledged without being stored",
                    message.topic,
                    message.payload[:1024],
                )
                result = WriteResult(messages=1)
                self._on_committed(batch, result)
                return result
            logger.warning(
                "database refused message on %r: %s; kept as a dead letter", message.topic, exc
            )
            error_text = (
                str(exc) if isinstance(exc, psycopg.Error) else f"{type(exc).__name__}: {exc}"
            )
            return await self.write(Batch([refused_by_database(message, error_text)]))
        self._on_committed(batch, result)
        return result

    async def _write_once(self, batch: Batch) -> WriteResult:
        started = time.monotonic()
        inserted = 0
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            refused = None if self._open_enrolment else await _refused_devices(conn, batch)
            meters, vehicles, dead_letters, overflow = batch.rows(refused)
            for rows, statements in ((meters, _METER_STATEMENTS), (vehicles, _VEHICLE_STATEMENTS)):
                if rows:
                    await _copy(cur, statements.copy, statements.types, rows)
                    if self._open_enrolment:
                        await cur.execute(statements.register)
                    inserted += await _count_inserted(cur, statements.insert_history)
                    await cur.execute(statements.update_live)
            if dead_letters:
                await _copy(cur, _COPY_DEAD_LETTERS, _DEAD_LETTER_TYPES, dead_letters)
            if overflow:
                await cur.executemany(_COUNT_OVERFLOW, overflow)
        self.last_commit_s = time.monotonic() - started
        readings = len(meters) + len(vehicles)
        return WriteResult(
            messages=len(batch),
            readings=readings,
            inserted=inserted,
            duplicates=readings - inserted,
            dead_letters=len(dead_letters),
            dead_letters_counted=sum(row[3] for row in overflow),
        )


async def _copy(
    cur: psycopg.AsyncCursor[tuple[int]],
    statement: str,
    types: list[str],
    rows: Sequence[tuple[object, ...]],
) -> None:
    async with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)


async def _refused_devices(
    conn: psycopg.AsyncConnection[Any], batch: Batch
) -> dict[tuple[str, str], str]:
    """Devices of the batch that may not report (closed enrolment), with the reason."""
    refused = await registry.refusals(conn, *batch.devices())
    return {device: refusal.reason for device, refusal in refused.items()}


async def _count_inserted(cur: psycopg.AsyncCursor[tuple[int]], statement: str) -> int:
    await cur.execute(statement)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
