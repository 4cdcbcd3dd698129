"""The reading kinds' declarations (gateway/reading_kinds.py) against a new database built from
schema.sql: the same columns and types, and a decoded reading's row lands in the right columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.database import apply_schema, open_pool
from gateway.reading_kinds import KINDS, Column, ReadingKind
from gateway.readings import Limits, decode_message
from gateway.rollup_slots import hour_columns, slot_columns
from gateway.write_statements import STATEMENTS

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LIMITS = Limits(4096, timedelta(minutes=5), timedelta(days=31))
_COLUMNS = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""


async def columns(conn: psycopg.AsyncConnection[Any], table: str) -> list[tuple[str, str]]:
    cur = await conn.execute(_COLUMNS, (table,))
    return [(name, kind) for name, kind in await cur.fetchall()]


async def declared(conn: psycopg.AsyncConnection[Any], *cols: Column) -> list[tuple[str, str]]:
    """The columns with their types as the database names them (bigint for int8, and so on)."""
    named = []
    for column in cols:
        cur = await conn.execute("SELECT format_type(%s::regtype, NULL)", (column.type,))
        row = await cur.fetchone()
        assert row is not None
        named.append((column.name, row[0]))
    return named


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
async def test_the_declared_columns_are_the_tables_columns(
    database_url: str, kind: ReadingKind[Any]
) -> None:
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        history = await columns(conn, kind.history)
        assert history == await declared(conn, *kind.history_columns)
        device_row = await columns(conn, kind.kind)
        assert set(await declared(conn, *kind.live)) <= set(device_row)
        hourly = dict(await columns(conn, f"{kind.kind}_hourly"))
        keys = await declared(conn, *kind.rollup_keys, kind.energy, Column("readings", "integer"))
        measures = await declared(conn, *(Column(m.name, m.type) for m in kind.measures))
        assert set(hourly) == {name for name, _ in keys + measures} | set(
            slot_columns().split(", ")
        )
        assert set(keys + measures) <= set(hourly.items())
        daily = dict(await columns(conn, f"{kind.kind}_daily"))
        assert set(daily) == {kind.device_id, "day", kind.energy.name, "readings"} | set(
            hour_columns().split(", ")
        )


async def test_a_decoded_readings_row_lands_in_its_staging_tables_columns(
    database_url: str,
) -> None:
    await apply_schema(database_url)
    meter = decode_message(
        "fleet/meter/M-1",
        b'{"kwhConsumedAc": 1.2345, "voltage": 231.5, "timestamp": "2026-03-02T11:59:00Z"}',
        NOW,
        LIMITS,
    )
    vehicle = decode_message(
        "fleet/vehicle/EV-1",
        b'{"soc": 61.5, "kwhDeliveredDc": 0.5, "batteryTemp": 27.25,'
        b' "timestamp": "2026-03-02T11:58:00Z"}',
        NOW,
        LIMITS,
    )
    staged = {
        "meter": (meter, {"consumed_ac_mwh": 1_234_500, "voltage": 231.5}),
        "vehicle": (vehicle, {"delivered_dc_mwh": 500_000, "soc": 61.5, "battery_temp": 27.25}),
    }
    async with open_pool(database_url, 1) as pool, pool.connection() as conn:
        for name, (decoded, values) in staged.items():
            kind = KINDS[name]
            assert decoded.device_id is not None
            [reading] = decoded.readings
            row = kind.row(decoded.device_id, reading, NOW)
            assert await columns(conn, kind.stage) == await declared(conn, *kind.staged)
            statements = STATEMENTS[name]
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            async with cur.copy(statements.copy) as copy:
                copy.set_types(statements.types)
                await copy.write_row(row)
            await cur.execute(f"SELECT * FROM {kind.stage}".encode())
            assert await cur.fetchall() == [
                {"name": decoded.device_id, "ts": reading.timestamp, **values, "received_at": NOW}
            ]
            await conn.rollback()
