"""Bytes per history row (table + primary-key index), measured on a private PostgreSQL.

Run: .venv/bin/python -m bench.storage [rows-per-device]
"""

from __future__ import annotations

import asyncio
import sys

import psycopg

from gateway.database import Partitions, apply_schema, open_pool
from tests.services import Postgres

DEVICES = 1000


async def measure(url: str, minutes: int) -> None:
    await apply_schema(url)
    async with open_pool(url, 1) as pool:
        await Partitions(pool).ensure_ahead(1)
    rows = DEVICES * minutes
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # One reading a minute per device over today's first hours, as the gateway writes them.
        await conn.execute(
            """
            INSERT INTO meter_reading (ts, consumed_ac_mwh, meter_id, voltage)
            SELECT date_trunc('day', now()) + m * interval '1 minute', 250000 + m, d, 230.5
            FROM generate_series(1, %(devices)s) d, generate_series(0, %(minutes)s - 1) m
            ORDER BY m, d""",
            {"devices": DEVICES, "minutes": minutes},
        )
        await conn.execute(
            """
            INSERT INTO vehicle_reading (ts, delivered_dc_mwh, vehicle_id, soc, battery_temp)
            SELECT date_trunc('day', now()) + m * interval '1 minute', 230000 + m, d, 55.5, 31.5
            FROM generate_series(1, %(devices)s) d, generate_series(0, %(minutes)s - 1) m
            ORDER BY m, d""",
            {"devices": DEVICES, "minutes": minutes},
        )
        await conn.execute("VACUUM ANALYZE meter_reading, vehicle_reading")
        print(f"{rows:,} rows per table ({DEVICES} devices x {minutes} minutes), arrival order")
        await _report(conn, rows)
        for table in ("meter_reading", "vehicle_reading"):
            await conn.execute(f"REINDEX TABLE {table}".encode())
        print("after REINDEX (what compacting a finished day's partitions gives):")
        await _report(conn, rows)


async def _report(conn: psycopg.AsyncConnection[tuple[int, int]], rows: int) -> None:
    for table in ("meter_reading", "vehicle_reading"):
        cur = await conn.execute(
            """
                SELECT sum(pg_table_size(c.oid)), sum(pg_indexes_size(c.oid))
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = %s::regclass""",
            (table,),
        )
        heap, index = await cur.fetchone() or (0, 0)
        print(
            f"{table}: {heap / rows:.1f} B/row table + {index / rows:.1f} B/row index"
            f" = {(heap + index) / rows:.1f} B/row"
        )


def main() -> None:
    minutes = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    server = Postgres()
    try:
        asyncio.run(measure(server.url, minutes))
    finally:
        server.close()


if __name__ == "__main__":
    main()
