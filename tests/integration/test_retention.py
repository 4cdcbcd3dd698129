"""Retention by tier (gateway/retention.py): whole days of history dropped and their rollups
kept, each tier expiring on its own, a late reading for a dropped day kept as a dead letter, one
process at a time, a dry run that is what the run then does, and a gateway role that removes
only through the two functions."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from gateway.database import apply_schema, open_pool
from gateway.lifecycle import LifecycleBusyError, lifecycle_lock
from gateway.partitions import Partitions, past_retention_reason
from gateway.retention import ROW_TIERS, RetentionPolicy
from gateway.settings import Settings, SettingsError
from gateway.writer import BatchWriter
from tests.http_helpers import meter_reading
from tests.lifecycle_helpers import (
    NOW,
    batch_of,
    cli,
    day,
    noon,
    partition,
    partitions_of,
    refused,
    run_once,
    seed_days,
)
from tests.support import LoginAs, StartGateway, count, equals, query, wait_until

_ROLLUPS = (
    "SELECT 'h', meter_id, hour, readings FROM meter_hourly UNION ALL"
    " SELECT 'hv', vehicle_id, hour, readings FROM vehicle_hourly UNION ALL"
    " SELECT 'd', meter_id, day, readings FROM meter_daily UNION ALL"
    " SELECT 'dv', vehicle_id, day, readings FROM vehicle_daily ORDER BY 1, 2, 3"
)


def test_each_tier_keeps_whole_utc_days_before_today() -> None:
    policy = RetentionPolicy(raw_days=7, hourly_days=30, daily_days=0, dead_letter_days=1,
                             alert_days=365)  # fmt: skip
    at = datetime(2026, 12, 2, 23, 59, tzinfo=UTC)
    assert policy.history_kept_from(at) == datetime(2026, 11, 25, tzinfo=UTC).date()
    assert policy.history_kept_from(at.replace(hour=0, minute=0)) == policy.history_kept_from(at)
    hourly, daily, dead, alerts = (policy.rows_kept_from(tier, at) for tier in ROW_TIERS)
    assert hourly == datetime(2026, 11, 2, tzinfo=UTC)
    assert daily is None  # 0: for ever
    assert dead == datetime(2026, 12, 1, tzinfo=UTC)
    assert alerts == datetime(2025, 12, 2, tzinfo=UTC)
    assert RetentionPolicy(0, 0, 0, 0, 0).history_kept_from(at) is None


def test_the_tiers_are_settings_with_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert RetentionPolicy.of(settings) == RetentionPolicy(90, 730, 0, 30, 365)
    assert (settings.retention_check_interval_s, settings.compaction_hour) == (3600, 3)
    assert Settings.from_env({"COMPACTION_HOUR": ""}).compaction_hour is None
    for bad in ({"COMPACTION_HOUR": "24"}, {"RETENTION_RAW_DAYS": "-1"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            Settings.from_env(bad)


def test_the_reason_names_the_days_past_retention() -> None:
    first, second, kept = day(40), day(39), day(30)
    assert past_retention_reason([first], 1, kept) == (
        f"its day {first} is past retention (history is kept from {kept})"
    )
    assert past_retention_reason([second, first, first], 3, kept) == (
        f"its 3 readings are past retention: days {first} to {second} (history is kept from {kept})"
    )
    assert past_retention_reason([first], 2, kept) == (
        f"1 of its 2 readings are past retention: day {first} (history is kept from {kept});"
        " the others were stored"
    )


async def test_days_older_than_the_raw_tier_are_dropped_whole_and_their_rollups_kept(
    database_url: str,
) -> None:
    await seed_days(database_url, (40, 10, 8, 7, 1))
    rollups = await query(database_url, _ROLLUPS)
    run = await run_once(database_url, RETENTION_RAW_DAYS="7")
    dropped = [partition(kind, age) for age in (40, 10, 8) for kind in ("meter", "vehicle")]
    assert [d.table for d in run.retention.dropped] == dropped
    assert await partitions_of(database_url) == {
        partition(kind, age) for age in (7, 1) for kind in ("meter", "vehicle")
    }
    assert await query(database_url, "SELECT count(*) FROM meter_reading") == [(4,)]
    # every rollup row stays, of dropped days too: their own tiers keep them 2 years, for ever
    assert await query(database_url, _ROLLUPS) == rollups
    assert await query(
        database_url, "SELECT device_kind, kept_from FROM history_horizon ORDER BY 1"
    ) == [("meter", day(7)), ("vehicle", day(7))]
    again = await run_once(database_url, RETENTION_RAW_DAYS="7")
    assert again.retention.dropped == ()


async def test_each_tier_expires_on_its_own(database_url: str) -> None:
    await seed_days(database_url, (90, 40, 20))  # raw history is kept for ever below
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for age in (15, 5):
            at = NOW - timedelta(days=age)
            await conn.execute(
                "INSERT INTO dead_letter (received_at, topic, reason, payload, payload_bytes)"
                " VALUES (%s, 'fleet/meter/M-1', %s, 'x', 1)",
                (at, f"{age} days old"),
            )
            await conn.execute(
                "INSERT INTO dead_letter_overflow VALUES (%s, 'meter', 'M-1', 3, %s, 'r', 'x', 1)",
                (at, at),
            )
        for raised, cleared in ((400, None), (40, 30), (12, 10)):
            cur = await conn.execute(
                "INSERT INTO alert (device_kind, device_name, rule, raised_at, cleared_at,"
                " value, threshold, message) VALUES ('vehicle', 'EV-1', %s, %s, %s, 61, 55, 'hot')"
                " RETURNING alert_id",
                (
                    f"rule-{raised}",
                    NOW - timedelta(days=raised),
                    None if cleared is None else NOW - timedelta(days=cleared),
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(
                "INSERT INTO alert_event (alert_id, state) VALUES (%s, 'raised'), (%s, 'cleared')",
                (row[0], row[0]),
            )
    tiers = {
        "RETENTION_RAW_DAYS": "0",
        "RETENTION_HOURLY_DAYS": "30",
        "RETENTION_DAILY_DAYS": "60",
        "RETENTION_DEAD_LETTER_DAYS": "10",
        "RETENTION_ALERT_DAYS": "20",
    }
    run = await run_once(database_url, **tiers)
    assert {(e.table, e.rows) for e in run.retention.deleted} == {
        ("meter_hourly", 4),  # days 90 and 40: two hours each
        ("vehicle_hourly", 2),
        ("meter_daily", 1),  # day 90 only
        ("vehicle_daily", 1),
        ("dead_letter", 1),
        ("dead_letter_overflow", 1),
        ("alert", 1),  # the one ended 30 days ago, with its two events
    }
    assert run.retention.dropped == ()
    assert len(await partitions_of(database_url)) == 6
    assert await query(database_url, "SELECT DISTINCT hour::date FROM meter_hourly") == [(day(20),)]
    assert await query(database_url, "SELECT day::date FROM meter_daily ORDER BY 1") == [
        (day(40),),
        (day(20),),
    ]
    assert await query(database_url, "SELECT reason FROM dead_letter") == [("5 days old",)]
    assert await query(database_url, "SELECT rule FROM alert ORDER BY 1") == [
        ("rule-12",),
        ("rule-400",),  # active: never deleted
    ]
    assert await count(database_url, "SELECT count(*) FROM alert_event") == 4
    # a tier at 0 keeps everything
    run = await run_once(database_url, **dict.fromkeys(tiers, "0"))
    assert run.retention.deleted == ()


async def test_a_reading_for_a_dropped_day_is_a_dead_letter_not_a_new_partition(
    database_url: str, start_gateway: StartGateway, publisher: aiomqtt.Client
) -> None:
    await seed_days(database_url, (20,))
    await run_once(database_url, RETENTION_RAW_DAYS="7")
    assert partition("meter", 20) not in await partitions_of(database_url)
    await start_gateway(max_reading_age_days=400, retention_check_interval_s=0)
    late = meter_reading("M-1", noon(20) + timedelta(hours=2), 1.0)
    mixed = [meter_reading("M-2", noon(20), 1.0), meter_reading("M-2", NOW, 1.0)]
    await publisher.publish("fleet/meter/M-1", json.dumps(late), qos=1)
    await publisher.publish("fleet/meter/M-2", json.dumps(mixed), qos=1)
    dead = "SELECT device_name, reason, convert_from(payload, 'UTF8') FROM dead_letter ORDER BY 1"
    await wait_until(
        lambda: equals(count(database_url, "SELECT count(*) FROM dead_letter"), 2),
        what="two dead letters",
    )
    kept = f"(history is kept from {day(19)})"
    assert await query(database_url, dead) == [
        ("M-1", f"its day {day(20)} is past retention {kept}", json.dumps(late)),
        (
            "M-2",
            f"1 of its 2 readings are past retention: day {day(20)} {kept}; the others were stored",
            json.dumps(mixed),
        ),
    ]
    await wait_until(
        lambda: equals(count(database_url, "SELECT count(*) FROM meter_reading"), 1),
        what="the array's reading of today stored",
    )
    assert partition("meter", 20) not in await partitions_of(database_url)


async def test_a_writer_that_knew_the_dropped_day_dead_letters_its_late_readings_too(
    database_url: str,
) -> None:
    """The day is dropped by another process after this writer made its partition: its insert
    finds no partition, and the reading is a dead letter all the same."""
    await apply_schema(database_url)
    async with open_pool(database_url, 1) as pool:
        writer = BatchWriter(pool, Partitions(pool), 0.5, lambda *_: None, open_enrolment=True)
        await writer.write(
            batch_of(meter_reading("M-1", noon(20), 1.0), meter_reading("M-1", NOW, 1.0))
        )
        await run_once(database_url, RETENTION_RAW_DAYS="7")
        result = await writer.write(  # both days are known to the writer: no look-up
            batch_of(
                meter_reading("M-1", noon(20) + timedelta(hours=1), 1.0),
                meter_reading("M-1", NOW + timedelta(seconds=1), 1.0),
            )
        )
    assert (result.inserted, result.dead_letters) == (1, 1)
    assert await query(database_url, "SELECT reason FROM dead_letter") == [
        (f"its day {day(20)} is past retention (history is kept from {day(19)})",)
    ]
    assert partition("meter", 20) not in await partitions_of(database_url)


async def test_retention_runs_in_one_process_at_a_time(database_url: str) -> None:
    await seed_days(database_url, (20, 1))
    before = await partitions_of(database_url)
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn,
        lifecycle_lock(conn) as held,
    ):
        assert held
        with pytest.raises(LifecycleBusyError):
            await run_once(database_url, RETENTION_RAW_DAYS="7")
        status, _, err = await cli("retention", DATABASE_URL=database_url, RETENTION_RAW_DAYS="7")
        assert (status, err.strip()) == (
            1,
            "fleetgate: retention not run: another process is running retention and compaction"
            " now; try again later",
        )
        assert await partitions_of(database_url) == before

    async def run_or_skip() -> list[str]:
        try:
            run = await run_once(database_url, RETENTION_RAW_DAYS="7")
        except LifecycleBusyError:
            return []
        return [d.table for d in run.retention.dropped]

    runs = await asyncio.gather(*(run_or_skip() for _ in range(4)))
    assert sorted(table for tables in runs for table in tables) == [
        partition("meter", 20),
        partition("vehicle", 20),
    ]


async def test_two_gateways_drop_an_old_day_once_by_themselves(
    database_url: str, start_gateway: StartGateway, settings: Settings
) -> None:
    await seed_days(database_url, (20, 1))
    gateways = [
        await start_gateway(client_id=f"{settings.client_id}-{n}", retention_raw_days=7)
        for n in range(2)
    ]
    samples = [g.gateway.metrics.registry.get_sample_value for g in gateways]

    async def checked() -> bool:
        return all(
            sum(sample("fleetgate_lifecycle_runs_total", {"result": r}) or 0 for r in
                ("done", "skipped")) >= 1
            for sample in samples
        )  # fmt: skip

    await wait_until(checked, what="both gateways' first retention check")
    assert partition("meter", 20) not in await partitions_of(database_url)
    dropped = [s("fleetgate_retention_partitions_dropped_total") or 0 for s in samples]
    assert sorted(dropped) == [0, 2]
    for sample in samples:  # storage figures, whoever ran
        assert (sample("fleetgate_storage_bytes", {"tier": "raw"}) or 0) > 0
    dropper = samples[dropped.index(2)]
    assert (
        dropper("fleetgate_history_oldest_day_seconds")
        == datetime.combine(day(1), datetime.min.time(), UTC).timestamp()
    )


async def test_the_dry_run_lists_exactly_what_the_run_then_does(database_url: str) -> None:
    await seed_days(database_url, (40, 20, 3, 1))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for age in (40, 15, 2):
            await conn.execute(
                "INSERT INTO dead_letter (received_at, topic, reason, payload, payload_bytes)"
                " VALUES (%s, 't', 'r', 'x', 1)",
                (NOW - timedelta(days=age),),
            )
    env = {
        "DATABASE_URL": database_url,
        "RETENTION_RAW_DAYS": "10",
        "RETENTION_HOURLY_DAYS": "30",
        "RETENTION_DEAD_LETTER_DAYS": "10",
        "COMPACTION_GRACE_HOURS": "0",
    }
    status, planned, err = await cli("retention", "--dry-run", **env)
    assert status == 0, err
    status, done, err = await cli("retention", **env)
    assert status == 0, err

    def tables(pattern: str, text: str) -> list[str]:
        return re.findall(pattern, text, re.M)

    drops = tables(r"^  (\w+_reading_\d{8}) \(", planned)
    assert drops == [partition(k, age) for age in (40, 20) for k in ("meter", "vehicle")]
    assert tables(r"^raw history: dropped (\w+) ", done) == drops
    deletes = tables(r"delete ([\d,]+ rows of \w+)", planned)
    assert "2 rows of meter_hourly" in deletes  # day 40's two hours, not day 20's
    assert "2 rows of dead_letter" in deletes
    assert tables(r"deleted ([\d,]+ rows of \w+)", done) == deletes
    reindexed = tables(r"^  reindex (\w+) ", planned)
    assert reindexed == [partition(k, age) for age in (3, 1) for k in ("meter", "vehicle")]
    assert tables(r"^compaction: (\w+) indexes", done) == reindexed
    status, after, _ = await cli("retention", "--dry-run", **env)
    assert "raw history: nothing before" in after
    assert tables(r"delete ([\d,]+) rows", after) == ["0"] * len(deletes)
    assert "0 finished partitions due" in after


async def test_the_gateway_role_drops_and_deletes_only_through_the_functions(
    database_url: str, login_as: LoginAs
) -> None:
    await seed_days(database_url, (20, 1))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO dead_letter (received_at, topic, reason, payload, payload_bytes)"
            " VALUES (now() - interval '40 days', 't', 'r', 'x', 1)"
        )
    gateway_url = login_as(database_url, "fleetgate_gateway")
    old = partition("meter", 20)
    for sql in (
        f"DROP TABLE {old}",
        f"ALTER TABLE meter_reading DETACH PARTITION {old}",
        f"TRUNCATE {old}",
        f"REINDEX TABLE {old}",
        "DELETE FROM meter_hourly",
        "DELETE FROM dead_letter",
        # the functions take only what they are for
        f"SELECT fleetgate_drop_history_partition('dead_letter', '{day(20)}')",
        f"SELECT fleetgate_drop_history_partition('meter_hourly', '{day(20)}')",
        "SELECT fleetgate_drop_history_partition('meter_reading', current_date)",
        "SELECT fleetgate_drop_history_partition('meter_reading', current_date - 1)",
        "CREATE TEMP TABLE meter_reading (ts timestamptz) PARTITION BY RANGE (ts);"
        f" SELECT fleetgate_drop_history_partition('pg_temp.meter_reading', '{day(20)}')",
        "SELECT fleetgate_expire_rows('meter', now() - interval '1 year', 10)",
        "SELECT fleetgate_expire_rows('api_token', now() - interval '1 year', 10)",
        "SELECT fleetgate_expire_rows('meter_reading', now() - interval '1 year', 10)",
        "SELECT fleetgate_expire_rows('dead_letter', now(), 10)",
        "SELECT fleetgate_expire_rows('dead_letter', now() - interval '23 hours', 10)",
    ):
        assert await refused(gateway_url, sql), sql
    assert old in await partitions_of(database_url)
    run = await run_once(
        gateway_url, compacting=True, RETENTION_RAW_DAYS="7", COMPACTION_GRACE_HOURS="0"
    )
    assert [d.table for d in run.retention.dropped] == [old, partition("vehicle", 20)]
    assert {e.table: e.rows for e in run.retention.deleted}["dead_letter"] == 1
    assert run.compacted == []
    assert run.compaction.refused is not None
    assert "fleetgate_owner" in run.compaction.refused
    api_url = login_as(database_url, "fleetgate_api")
    for sql in (
        f"SELECT fleetgate_drop_history_partition('meter_reading', '{day(1) - timedelta(1)}')",
        "SELECT fleetgate_expire_rows('dead_letter', now() - interval '1 year', 10)",
    ):
        assert await refused(api_url, sql), sql
