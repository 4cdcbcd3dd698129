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
from gateway.rollup_levels import LEVELS, RollupLevel
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


@pytest.mark.parametrize(
    ("kind", "level"),
    [(kind, level) for kind in KINDS.values() for level in LEVELS],
    ids=[f"{kind}_{level.name}" for kind in KINDS for level in LEVELS],
)
async def test_the_declared_rollup_levels_are_the_tables(
    database_url: str, kind: ReadingKind[Any], level: RollupLevel
) -> None:
    """Each level of gateway/rollup_levels.py is a table with exactly its declared columns and
    types (in order), keyed by device and the start of its span; and no other rollup table."""
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        table = level.table(kind)
        assert await columns(conn, table) == await declared(conn, *level.columns(kind))
        cur = await conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = %s::regclass AND contype = 'p'",
            (table,),
        )
        keys = ", ".join(column.name for column in level.keys(kind))
        assert await cur.fetchall() == [(f"PRIMARY KEY ({keys})",)]
        cur = await conn.execute(
            "SELECT relname::text FROM pg_class WHERE relkind = 'r' AND relname LIKE %s ORDER BY 1",
            (f"{kind.kind}\\_%ly",),
        )
        assert [name for (name,) in await cur.fetchall()] == sorted(
            each.table(kind) for each in LEVELS
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
