"""Schema versions: a database made by fleetgate 0.1.0, migrated, equals one built from
schema.sql, keeps its rows, and applying the schema again or from several processes at once
changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from gateway import schema
from gateway.schema import SchemaVersionError, apply_schema, latest_version, migrations
from tests.services import Postgres
from tests.support import query

# schema.sql as released in 0.1.0 (git show 035201a:schema.sql), the oldest schema supported.
_SCHEMA_0_1_0: Final = Path(__file__).with_name("schema_0_1_0.sql")

# What makes up a schema, read from the catalogs: rows of each kind, compared as sets (so the
# order of columns added by a migration does not matter).
_CATALOG: Final = {
    "tables": """
        SELECT relname, relkind::text, coalesce(pg_get_partkeydef(oid), ''),
               coalesce(array_to_string(reloptions, ','), '')
        FROM pg_class
        WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p', 'v', 'm')""",
    "columns": """
        SELECT table_name, column_name, data_type, udt_name, is_nullable,
               coalesce(column_default, ''), is_identity, coalesce(identity_generation, ''),
               is_generated
        FROM information_schema.columns WHERE table_schema = current_schema()""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = current_schema()::regnamespace""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = current_schema()""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, max_value, cycle
        FROM pg_sequences WHERE schemaname = current_schema()""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prokind::text,
               CASE WHEN p.prokind = 'a'
                    THEN concat_ws(' ', a.aggtransfn, a.aggcombinefn, a.aggtranstype::regtype,
                                   p.proparallel)
                    ELSE pg_get_functiondef(p.oid) END
        FROM pg_proc p LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
        WHERE p.pronamespace = current_schema()::regnamespace""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal AND tgrelid IN (
            SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace)""",
    "owners": """
        SELECT relname, relowner::regrole::text FROM pg_class
        WHERE relnamespace = current_schema()::regnamespace
        UNION ALL
        SELECT proname, proowner::regrole::text FROM pg_proc
        WHERE pronamespace = current_schema()::regnamespace""",
    # Who may do what: on tables, their columns, functions, the schema and the database.
    "privileges": """
        SELECT c.relname, '', a.grantee::regrole::text, a.privilege_type, a.is_grantable
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.relnamespace = current_schema()::regnamespace
        UNION ALL
        SELECT c.relname, t.attname, a.grantee::regrole::text, a.privilege_type, a.is_grantable
        FROM pg_class c JOIN pg_attribute t ON t.attrelid = c.oid, aclexplode(t.attacl) a
        WHERE c.relnamespace = current_schema()::regnamespace
        UNION ALL
        SELECT p.proname, '', a.grantee::regrole::text, a.privilege_type, a.is_grantable
        FROM pg_proc p, aclexplode(p.proacl) a
        WHERE p.pronamespace = current_schema()::regnamespace
        UNION ALL
        SELECT 'schema', '', a.grantee::regrole::text, a.privilege_type, a.is_grantable
        FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.oid = current_schema()::regnamespace
        UNION ALL
        SELECT 'database', '', a.grantee::regrole::text, a.privilege_type, a.is_grantable
        FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database()""",
}

# A row in every table of 0.1.0, as its gateway and API would have left them.
_ROWS_0_1_0: Final = """
INSERT INTO meter (name, ts, received_at, consumed_ac_mwh, voltage)
VALUES ('M-1', '2026-03-01 10:05+00', '2026-03-01 10:05:01+00', 1200, 230.5);
INSERT INTO vehicle (name, ts, received_at, soc, delivered_dc_mwh, battery_temp)
VALUES ('V-1', '2026-03-01 10:05+00', '2026-03-01 10:05:01+00', 55.5, 1000, 31.5);
SELECT fleetgate_ensure_partition('meter_reading', '2026-03-01');
SELECT fleetgate_ensure_partition('vehicle_reading', '2026-03-01');
INSERT INTO meter_reading VALUES ('2026-03-01 10:05+00', 1200, 1, 230.5);
INSERT INTO vehicle_reading VALUES ('2026-03-01 10:05+00', 1000, 1, 55.5, 31.5);
INSERT INTO meter_hourly (meter_id, hour, consumed_ac_mwh, readings, voltage_min, voltage_max,
                          slot0_mwh, slot0_readings)
VALUES (1, '2026-03-01 10:00+00', 1200, 1, 230.5, 230.5, 1200, 1);
INSERT INTO vehicle_hourly (vehicle_id, hour, delivered_dc_mwh, readings, battery_temp_sum,
                            battery_temp_min, battery_temp_max, slot0_mwh, slot0_readings)
VALUES (1, '2026-03-01 10:00+00', 1000, 1, 31.5, 31.5, 31.5, 1000, 1);
INSERT INTO meter_daily (meter_id, day, consumed_ac_mwh, readings, hour10_mwh, hour10_readings)
VALUES (1, '2026-03-01 00:00+00', 1200, 1, 1200, 1);
INSERT INTO vehicle_daily (vehicle_id, day, delivered_dc_mwh, readings, hour10_mwh,
                           hour10_readings)
VALUES (1, '2026-03-01 00:00+00', 1000, 1, 1000, 1);
INSERT INTO dead_letter (received_at, topic, device_kind, device_name, reason, payload,
                         payload_bytes)
VALUES ('2026-03-01 10:06+00', 'fleet/meter/M-1', 'meter', 'M-1', 'not JSON', 'x', 1);
INSERT INTO alert (device_kind, device_name, rule, raised_at, value, threshold, message)
VALUES ('vehicle', 'V-1', 'battery_hot', '2026-03-01 10:05+00', 61, 60, 'hot');
INSERT INTO alert_event (alert_id, state) VALUES (1, 'raised');
INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from) VALUES (1, 1, '2026-03-01 00:00+00');
INSERT INTO api_token (name, scope, token_hash) VALUES ('ops', 'write', '\\x0102');
"""
# Whether schema.sql ran: CREATE OR REPLACE FUNCTION writes the function's row again.
_SCHEMA_SQL_RUN_AT: Final = (
    "SELECT xmin::text FROM pg_proc WHERE proname = 'fleetgate_ensure_partition'"
)
_RECORDED: Final = "SELECT version, script, applied_at FROM schema_migration ORDER BY version"


@pytest.fixture
def other_database_url(postgres: Postgres) -> str:
    """A second new, empty database for the same test."""
    name = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return postgres.url.rsplit("/", 1)[0] + "/" + name


async def build_0_1_0(database_url: str, rows: str = "") -> None:
    """A database as fleetgate 0.1.0 left it: its schema.sql applied, with the digest it kept."""
    script = _SCHEMA_0_1_0.read_text(encoding="utf-8")
    digest = hashlib.sha256(script.encode()).hexdigest()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(script.encode())
        await conn.execute("INSERT INTO schema_applied (digest) VALUES (%s)", (digest,))
        if rows:
            await conn.execute(rows.encode())


async def run(database_url: str, sql: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(sql.encode())


async def catalog(database_url: str) -> dict[str, set[tuple[Any, ...]]]:
    return {kind: set(await query(database_url, sql)) for kind, sql in _CATALOG.items()}


async def columns(database_url: str) -> dict[str, list[str]]:
    """The columns of every table, in order (a partitioned table's through its parent)."""
    rows = await query(
        database_url,
        """SELECT c.relname, a.attname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
             AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY c.relname, a.attnum""",
    )
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


async def contents(
    database_url: str, only: dict[str, list[str]] | None = None
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, or of the tables and columns in ``only``."""
    tables = only or await columns(database_url)
    return {
        table: await query(
            database_url,
            f"SELECT {', '.join(names)} FROM {table} t ORDER BY ({', '.join(names)})::text",
        )
        for table, names in tables.items()
    }


async def test_a_database_from_0_1_0_migrated_equals_one_built_from_schema_sql(
    database_url: str, other_database_url: str
) -> None:
    await build_0_1_0(database_url)
    await apply_schema(database_url)
    await apply_schema(other_database_url)
    migrated, fresh = await catalog(database_url), await catalog(other_database_url)
    assert fresh["tables"]  # the catalog queries see the schema
    for kind in _CATALOG:
        assert migrated[kind] == fresh[kind], kind
    steps = migrations()
    assert [row[:2] for row in await query(database_url, _RECORDED)] == [
        (step.version, step.script) for step in steps
    ]
    assert [row[:2] for row in await query(other_database_url, _RECORDED)] == [
        (latest_version(steps), "schema.sql")
    ]


async def test_the_comparison_sees_a_missing_migration(
    database_url: str, other_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proof that the test above has teeth: without the last migration, the schemas differ."""
    without_last = migrations()[:-1]
    monkeypatch.setattr(schema, "migrations", lambda: without_last)
    await build_0_1_0(database_url)
    await apply_schema(database_url)
    monkeypatch.undo()
    await apply_schema(other_database_url)
    assert await catalog(database_url) != await catalog(other_database_url)


_PARTS: Final = re.compile(r"(slot\d|hour\d+)_(mwh|readings)$")


async def test_a_0_1_0_database_keeps_its_rows_when_migrated(database_url: str) -> None:
    await build_0_1_0(database_url, _ROWS_0_1_0)
    assert all((await contents(database_url)).values())
    old_columns = await columns(database_url)
    del old_columns["schema_applied"]  # retired by migration 0002
    # and migration 0008 drops the rollups' 10-minute slots and hours of the day
    kept = {
        table: [c for c in names if not _PARTS.match(c)] for table, names in old_columns.items()
    }
    before = await contents(database_url, kept)
    await apply_schema(database_url)
    assert await contents(database_url, kept) == before
    new_columns = await columns(database_url)
    assert not any(_PARTS.match(c) for names in new_columns.values() for c in names)
    # Devices that reported are registered, active devices, created when first seen, no login.
    for table in ("meter", "vehicle"):
        assert await query(
            database_url,
            f"SELECT name, state, created_at = first_seen_at, tags, secret_hash FROM {table}",
        ) == [("M-1" if table == "meter" else "V-1", "active", True, [], None)]


async def test_applying_again_changes_nothing_and_force_repairs(
    database_url: str, other_database_url: str
) -> None:
    await build_0_1_0(other_database_url)
    for url in (database_url, other_database_url):  # new, and migrated from 0.1.0
        await apply_schema(url)
        recorded = await query(url, _RECORDED)
        schema_sql_run = await query(url, _SCHEMA_SQL_RUN_AT)
        await apply_schema(url)
        assert await query(url, _RECORDED) == recorded
        assert await query(url, _SCHEMA_SQL_RUN_AT) == schema_sql_run
        # force: schema.sql again, which brings back what was dropped, and records nothing
        await run(url, "DROP TABLE dead_letter_overflow")
        await apply_schema(url, force=True)
        assert await query(url, "SELECT count(*) FROM dead_letter_overflow") == [(0,)]
        assert await query(url, _SCHEMA_SQL_RUN_AT) != schema_sql_run
        assert await query(url, _RECORDED) == recorded


async def test_processes_starting_at_once_take_turns(
    database_url: str, other_database_url: str
) -> None:
    await build_0_1_0(database_url)
    await asyncio.gather(
        *(apply_schema(url) for url in (database_url, other_database_url) for _ in range(3))
    )
    steps = migrations()
    assert [row[:2] for row in await query(database_url, _RECORDED)] == [
        (step.version, step.script) for step in steps
    ]
    assert [row[:2] for row in await query(other_database_url, _RECORDED)] == [
        (latest_version(steps), "schema.sql")
    ]


async def test_a_database_of_unknown_version_is_refused_and_a_newer_one_left_alone(
    database_url: str, other_database_url: str
) -> None:
    await run(database_url, "CREATE TABLE meter (meter_id integer)")
    with pytest.raises(SchemaVersionError):
        await apply_schema(database_url)
    await apply_schema(other_database_url)
    await run(other_database_url, "INSERT INTO schema_migration VALUES (99, 'later.sql')")
    await run(other_database_url, "DROP TABLE dead_letter")
    await apply_schema(other_database_url, force=True)
    assert await query(other_database_url, "SELECT to_regclass('dead_letter')") == [(None,)]
