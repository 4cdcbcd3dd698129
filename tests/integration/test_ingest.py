"""End to end through a real Mosquitto and a real PostgreSQL, gateway in this process."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg

from gateway.database import apply_schema
from tests.support import StartGateway, count, query, wait_until


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def meter(meter_id: str, at: datetime, kwh: float = 1.5, voltage: float = 229.5) -> bytes:
    return json.dumps(
        {"meterId": meter_id, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": iso(at)}
    ).encode()


def vehicle(
    vehicle_id: str, at: datetime, kwh: float = 1.2, soc: float = 50, temp: float = 30
) -> dict[str, Any]:
    return {
        "vehicleId": vehicle_id,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": iso(at),
    }


NOW = datetime.now(UTC).replace(microsecond=0)


async def test_readings_reach_history_and_live_rows(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    await start_gateway()
    at = NOW - timedelta(minutes=1)
    await publisher.publish(
        "fleet/meter/MTR-101", meter("MTR-101", at, kwh=12.8, voltage=228), qos=1
    )
    await publisher.publish(
        "fleet/vehicle/EV-101", json.dumps(vehicle("EV-101", at, kwh=10.5, soc=75, temp=35)), qos=1
    )

    async def both_stored() -> bool:
        return (
            await count(database_url, "SELECT count(*) FROM meter_reading") == 1
            and await count(database_url, "SELECT count(*) FROM vehicle_reading") == 1
        )

    await wait_until(both_stored, what="one meter and one vehicle reading")
    assert await query(
        database_url,
        """
        SELECT m.name, r.ts, r.consumed_ac_mwh, r.voltage
        FROM meter_reading r JOIN meter m USING (meter_id)""",
    ) == [("MTR-101", at, 12_800_000, 228.0)]
    [live] = await query(
        database_url,
        """
        SELECT name, ts, soc, delivered_dc_mwh, battery_temp, received_at FROM vehicle""",
    )
    assert live[:5] == ("EV-101", at, 75.0, 10_500_000, 35.0)
    assert abs(live[5] - datetime.now(UTC)) < timedelta(seconds=30)


async def test_a_repeated_reading_is_stored_once_and_counted_as_duplicate(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    running = await start_gateway()
    payload = meter("MTR-7", NOW - timedelta(minutes=2))
    for _ in range(3):
        await publisher.publish("fleet/meter/MTR-7", payload, qos=1)
    await publisher.publish("fleet/meter/MTR-7", meter("MTR-7", NOW - timedelta(minutes=1)), qos=1)

    async def all_committed() -> bool:
        return running.gateway.metrics.messages._value.get() >= 4

    await wait_until(all_committed, what="four messages committed")
    assert await count(database_url, "SELECT count(*) FROM meter_reading") == 2
    metrics = running.gateway.metrics
    assert metrics.duplicates._value.get() == 2
    assert metrics.readings._value.get() == 2


async def test_late_readings_go_to_history_but_never_turn_back_the_live_row(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    await start_gateway()
    newest = NOW - timedelta(minutes=1)
    await publisher.publish("fleet/meter/M-late", meter("M-late", newest, voltage=231), qos=1)
    await wait_until(lambda: _stored(database_url, "meter_reading", 1), what="first reading")
    # An outage's backlog arrives: older readings, one message each and one array.
    for minutes in (5, 4):
        await publisher.publish(
            "fleet/meter/M-late",
            meter("M-late", newest - timedelta(minutes=minutes), voltage=200),
            qos=1,
        )
    older = [
        json.loads(meter("M-late", newest - timedelta(minutes=m), voltage=210)) for m in (3, 2)
    ]
    await publisher.publish("fleet/meter/M-late", json.dumps(older), qos=1)
    await wait_until(lambda: _stored(database_url, "meter_reading", 5), what="backlog stored")
    assert await query(database_url, "SELECT ts, voltage FROM meter") == [(newest, 231.0)]


async def _stored(database_url: str, table: str, expected: int) -> bool:
    return await count(database_url, f"SELECT count(*) FROM {table}") >= expected


async def test_each_kind_of_bad_input_lands_in_dead_letters_with_its_reason(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    running = await start_gateway(max_payload_bytes=2048)
    at = NOW - timedelta(minutes=1)
    bad = {
        "fleet/meter/M-json": (b'{"kwhConsumedAc": 1,', "malformed JSON"),
        "fleet/meter/M-type": (
            json.dumps({"kwhConsumedAc": "1", "voltage": 230, "timestamp": iso(at)}).encode(),
            "$.kwhConsumedAc",
        ),
        "fleet/vehicle/V-range": (json.dumps(vehicle("V-range", at, soc=130)).encode(), "$.soc"),
        "fleet/vehicle/V-mismatch": (json.dumps(vehicle("V-other", at)).encode(), "does not match"),
        "fleet/vehicle/V-future": (
            json.dumps(vehicle("V-future", NOW + timedelta(hours=1))).encode(),
            "in the future",
        ),
        "fleet/charger/C-1": (b"{}", "unknown topic"),
        "fleet/meter/M-big": (b" " * 3000, "exceeds the 2048-byte limit"),
        "fleet/meter/M-utf8": (
            b'{"meterId": "\xff", "kwhConsumedAc": 1, "voltage": 230, '
            b'"timestamp": "2026-02-09T08:45:00Z"}',
            "not valid UTF-8",
        ),
    }
    for topic, (payload, _) in bad.items():
        await publisher.publish(topic, payload, qos=1)
    await publisher.publish("fleet/meter/M-good", meter("M-good", at), qos=1)

    await wait_until(lambda: _stored(database_url, "dead_letter", len(bad)), what="dead letters")
    await wait_until(lambda: _stored(database_url, "meter_reading", 1), what="the good reading")
    rows = await query(
        database_url, "SELECT topic, reason, payload, payload_bytes, received_at FROM dead_letter"
    )
    by_topic = {row[0]: row for row in rows}
    assert set(by_topic) == set(bad)
    for topic, (payload, reason) in bad.items():
        _, stored_reason, stored_payload, size, received_at = by_topic[topic]
        assert reason in stored_reason, (topic, stored_reason)
        assert size == len(payload)
        assert bytes(stored_payload) == (payload if len(payload) <= 2048 else payload[:1024])
        assert abs(received_at - datetime.now(UTC)) < timedelta(seconds=30)
    assert running.gateway.metrics.dead_letters._value.get() == len(bad)


async def test_array_with_one_bad_reading_keeps_the_others(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    await start_gateway()
    start = NOW - timedelta(hours=1)
    readings = [vehicle("EV-buf", start + timedelta(minutes=i), soc=40 + i) for i in range(10)]
    readings[4]["batteryTemp"] = "hot"
    await publisher.publish("fleet/vehicle/EV-buf", json.dumps(readings), qos=1)
    await wait_until(lambda: _stored(database_url, "dead_letter", 1), what="one dead letter")
    await wait_until(lambda: _stored(database_url, "vehicle_reading", 9), what="nine readings")
    [(reason, payload)] = await query(database_url, "SELECT reason, payload FROM dead_letter")
    assert reason.startswith("element 4 of 10")
    assert json.loads(bytes(payload))["batteryTemp"] == "hot"
    assert await query(database_url, "SELECT soc FROM vehicle") == [(49.0,)]


async def test_reading_on_a_day_without_a_partition_is_stored(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    await start_gateway()
    long_ago = NOW - timedelta(days=20)  # partitions are made from yesterday onwards
    await publisher.publish("fleet/meter/M-old", meter("M-old", long_ago), qos=1)
    await wait_until(lambda: _stored(database_url, "meter_reading", 1), what="old reading")
    partitions = await query(
        database_url,
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'meter_reading'::regclass ORDER BY 1""",
    )
    names = [name for (name,) in partitions]
    assert f"meter_reading_{long_ago:%Y%m%d}" in names
    # ...and the days ahead were made without waiting for readings.
    assert f"meter_reading_{NOW + timedelta(days=7):%Y%m%d}" in names


async def test_schema_applies_twice_and_from_two_processes_at_once(database_url: str) -> None:
    await asyncio.gather(*(apply_schema(database_url) for _ in range(4)))
    await apply_schema(database_url)
    assert await count(database_url, "SELECT count(*) FROM meter") == 0
    assert await count(database_url, "SELECT count(*) FROM schema_migration") == 1


async def test_a_start_with_the_schema_in_place_does_not_wait_for_a_running_writer(
    database_url: str,
) -> None:
    """The API, the token command or a second gateway starting while a writer holds its locks
    (a demo once deadlocked here): the schema is in place already, so nothing is applied."""
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as writer:
        await writer.execute("LOCK TABLE meter, meter_reading, meter_hourly IN EXCLUSIVE MODE")
        await asyncio.wait_for(apply_schema(database_url), timeout=10)
        await writer.rollback()


async def test_a_thousand_messages_from_many_devices_are_all_stored_once(
    start_gateway: StartGateway, publisher: aiomqtt.Client, database_url: str
) -> None:
    await start_gateway(batch_size=100)
    start = NOW - timedelta(minutes=30)
    for minute in range(10):
        for device in range(100):
            at = start + timedelta(minutes=minute)
            await publisher.publish(
                f"fleet/vehicle/EV-{device}",
                json.dumps(vehicle(f"EV-{device}", at, soc=minute)),
                qos=1,
            )
    await wait_until(lambda: _stored(database_url, "vehicle_reading", 1000), what="1000 readings")
    assert await count(database_url, "SELECT count(*) FROM vehicle") == 100
    assert await count(database_url, "SELECT count(*) FROM vehicle WHERE soc = 9") == 100
    assert await count(database_url, "SELECT count(*) FROM vehicle_reading") == 1000
