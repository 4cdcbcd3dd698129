"""Alerts end to end: a real broker, a real subscriber on fleet/alerts/#, the gateway in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg
import pytest

from gateway.alert_rules import Observation, describe, worse
from gateway.database import apply_schema
from gateway.registry import DeviceRecord, register
from gateway.settings import Settings
from tests.conftest import StartGateway, count, query, wait_until
from tests.services import Mosquitto

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def vehicle(name: str, minute: int, temp: float = 30, kwh: float = 0.5) -> bytes:
    return json.dumps(
        {
            "soc": 50,
            "kwhDeliveredDc": kwh,
            "batteryTemp": temp,
            "timestamp": iso(BASE + timedelta(minutes=minute)),
        }
    ).encode()


def meter(minute: int, voltage: float = 230, kwh: float = 0.5) -> bytes:
    return json.dumps(
        {
            "kwhConsumedAc": kwh,
            "voltage": voltage,
            "timestamp": iso(BASE + timedelta(minutes=minute)),
        }
    ).encode()


@pytest.fixture(autouse=True)
async def clear_retained_alerts(mosquitto: Mosquitto) -> AsyncIterator[None]:
    """After each test (and its gateway) is done, remove the retained alerts it left on the
    shared broker, so no other test receives them."""
    yield
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=f"cleaner-{uuid.uuid4().hex[:6]}"
    ) as client:
        await client.subscribe("fleet/alerts/#", qos=1)
        topics: set[str] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    if message.retain and message.payload:
                        topics.add(message.topic.value)
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)


class AlertListener:
    """A field engineer's subscription to fleet/alerts/#."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.removals: list[str] = []  # empty retained messages: a cleared alert's topic

    def of(self, device: str, rule: str) -> list[str]:
        return [e["state"] for e in self.events if e["deviceId"] == device and e["rule"] == rule]

    async def listen(self, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=f"engineer-{uuid.uuid4().hex[:6]}"
        ) as client:
            await client.subscribe("fleet/alerts/#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                if payload:
                    self.events.append(json.loads(payload))
                else:
                    self.removals.append(message.topic.value)


@contextlib.asynccontextmanager
async def listening(mosquitto: Mosquitto) -> AsyncIterator[AlertListener]:
    listener = AlertListener()
    ready = asyncio.Event()
    task = asyncio.create_task(listener.listen(mosquitto.port, ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_battery_over_temperature_raises_once_holds_in_the_band_and_clears_once(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    async with listening(mosquitto) as engineer:
        await start_gateway()
        topic = "fleet/vehicle/EV-hot"
        for minute, temp in enumerate([40, 56, 58.5, 57]):
            await publisher.publish(topic, vehicle("EV-hot", minute, temp), qos=1)
            # Rounds driven by readings run at most once a second and judge the latest reading:
            # give each reading its own round (0.4 s failed on a loaded machine: 58.5 unseen).
            await asyncio.sleep(1.3)
        await wait_until(
            lambda: _has(engineer, "EV-hot", "batteryOverTemp", ["raised"]), what="one raise"
        )
        await publisher.publish(topic, vehicle("EV-hot", 5, 52), qos=1)  # in the band: holds
        await asyncio.sleep(1.5)
        assert engineer.of("EV-hot", "batteryOverTemp") == ["raised"]
        await publisher.publish(topic, vehicle("EV-hot", 6, 49), qos=1)
        await wait_until(
            lambda: _has(engineer, "EV-hot", "batteryOverTemp", ["raised", "cleared"]),
            what="one clear",
        )
        raised, cleared = [e for e in engineer.events if e["deviceId"] == "EV-hot"]
        assert raised["alertId"] == cleared["alertId"]
        assert raised["deviceKind"] == "vehicle"
        assert raised["threshold"] == 55
        assert raised["clearedAt"] is None
        assert cleared["value"] == 58.5  # the worst value seen while active
        assert cleared["clearedAt"] is not None
        assert "49.0 °C now" in cleared["message"]
        await wait_until(
            lambda: _removed(engineer, "fleet/alerts/vehicle/EV-hot/batteryOverTemp"),
            what="retained alert removed",
        )
    [(value, threshold, cleared_at)] = await query(
        database_url, "SELECT value, threshold, cleared_at FROM alert"
    )
    assert (value, threshold) == (58.5, 55.0)
    assert cleared_at is not None


async def _has(listener: AlertListener, device: str, rule: str, states: list[str]) -> bool:
    return listener.of(device, rule) == states


async def _removed(listener: AlertListener, topic: str) -> bool:
    return topic in listener.removals


async def test_a_late_subscriber_sees_active_alerts_and_not_cleared_ones(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
) -> None:
    await start_gateway()
    await publisher.publish("fleet/vehicle/EV-late1", vehicle("EV-late1", 0, 70), qos=1)
    await publisher.publish("fleet/vehicle/EV-late2", vehicle("EV-late2", 0, 70), qos=1)
    await asyncio.sleep(0.5)
    await publisher.publish("fleet/vehicle/EV-late2", vehicle("EV-late2", 1, 20), qos=1)
    await asyncio.sleep(2.0)
    async with listening(mosquitto) as engineer:
        await wait_until(
            lambda: _has(engineer, "EV-late1", "batteryOverTemp", ["raised"]), what="retained raise"
        )
        await asyncio.sleep(0.5)
        assert engineer.of("EV-late2", "batteryOverTemp") == []


async def test_voltage_out_of_range_is_raised_only_after_the_minimum_duration(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
) -> None:
    async with listening(mosquitto) as engineer:
        await start_gateway(voltage_min_duration_s=120)
        topic = "fleet/meter/M-volt"
        for minute, volts in enumerate([230, 262, 263]):  # out of range for 60 s only
            await publisher.publish(topic, meter(minute, volts), qos=1)
            await asyncio.sleep(0.4)
        await asyncio.sleep(1.0)
        assert engineer.of("M-volt", "voltageOutOfRange") == []
        await publisher.publish(topic, meter(3, 190), qos=1)  # 120 s out of the band
        await wait_until(
            lambda: _has(engineer, "M-volt", "voltageOutOfRange", ["raised"]),
            what="raise after 120 s out of range",
        )
        [raised] = [e for e in engineer.events if e["deviceId"] == "M-volt"]
        assert raised["value"] == 190
        assert raised["threshold"] == pytest.approx(207)
        await publisher.publish(topic, meter(4, 231), qos=1)
        await wait_until(
            lambda: _has(engineer, "M-volt", "voltageOutOfRange", ["raised", "cleared"]),
            what="clear",
        )


async def test_a_meter_is_judged_against_its_own_nominal_voltage(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await register(
            conn,
            [
                DeviceRecord("meter", "M-400", nominal_voltage_v=400, phases=3),
                DeviceRecord("meter", "M-230"),  # no nominal voltage: VOLTAGE_NOMINAL_V (230)
            ],
        )
    async with listening(mosquitto) as engineer:
        await start_gateway(voltage_min_duration_s=0)
        await publisher.publish("fleet/meter/M-400", meter(0, 400), qos=1)

        async def stored() -> bool:
            return await count(database_url, "SELECT count(*) FROM meter_reading") == 1

        await wait_until(stored, what="the 400 V meter's reading")
        # Rounds judge in order: once M-230's alert is up, M-400 has been judged too.
        await publisher.publish("fleet/meter/M-230", meter(0, 400), qos=1)
        await wait_until(
            lambda: _has(engineer, "M-230", "voltageOutOfRange", ["raised"]), what="230 V raised"
        )
        assert engineer.of("M-400", "voltageOutOfRange") == []  # no false alert at 400 V
        await publisher.publish("fleet/meter/M-400", meter(1, 460), qos=1)
        await wait_until(
            lambda: _has(engineer, "M-400", "voltageOutOfRange", ["raised"]), what="460 V raised"
        )
    [raised] = [e for e in engineer.events if e["deviceId"] == "M-400"]
    assert (raised["value"], raised["threshold"]) == (460, pytest.approx(440))
    assert raised["message"] == ("Voltage out of range on M-400: 460.0 V, threshold 440.0 V.")


async def test_device_offline_is_raised_on_a_timer_and_cleared_by_the_next_reading(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
) -> None:
    async with listening(mosquitto) as engineer:
        await start_gateway(offline_after_s=1.5, alert_check_interval_s=0.5)
        await publisher.publish("fleet/meter/M-quiet", meter(0), qos=1)
        await wait_until(
            lambda: _has(engineer, "M-quiet", "deviceOffline", ["raised"]), what="offline raised"
        )
        await publisher.publish("fleet/meter/M-quiet", meter(1), qos=1)
        await wait_until(
            lambda: _has(engineer, "M-quiet", "deviceOffline", ["raised", "cleared"]),
            seconds=5,
            what="cleared",
        )


async def _link(database_url: str, vehicle_name: str, meter_name: str) -> None:
    await query(
        database_url,
        """
        WITH v AS (INSERT INTO vehicle (name) VALUES (%s) RETURNING vehicle_id),
             m AS (INSERT INTO meter (name) VALUES (%s) RETURNING meter_id)
        INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from)
        SELECT vehicle_id, meter_id, %s FROM v, m RETURNING link_id""",
        vehicle_name,
        meter_name,
        BASE - timedelta(days=1),
    )


async def test_low_efficiency_and_dc_exceeding_ac_through_the_vehicles_meter(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    settings: Settings,
) -> None:
    await apply_schema(settings.database_url)
    await _link(settings.database_url, "EV-eff", "M-eff")
    async with listening(mosquitto) as engineer:
        await start_gateway(efficiency_min_ac_kwh=1.0)
        # 3 kWh AC and 2.4 kWh DC: 80 % < 85 %.
        for minute in range(6):
            await publisher.publish("fleet/meter/M-eff", meter(minute, kwh=0.5), qos=1)
            await publisher.publish(
                "fleet/vehicle/EV-eff", vehicle("EV-eff", minute, kwh=0.4), qos=1
            )
        await wait_until(
            lambda: _has(engineer, "EV-eff", "lowEfficiency", ["raised"]),
            what="lowEfficiency raised",
        )
        raised = next(e for e in engineer.events if e["rule"] == "lowEfficiency")
        assert raised["value"] == pytest.approx(0.8)
        assert engineer.of("EV-eff", "dcExceedsAc") == []
        # Then DC runs ahead of AC: 3.3 AC against 4.6 DC over the window.
        for minute in range(6, 9):
            await publisher.publish("fleet/meter/M-eff", meter(minute, kwh=0.1), qos=1)
            await publisher.publish(
                "fleet/vehicle/EV-eff", vehicle("EV-eff", minute, kwh=0.8), qos=1
            )
        await wait_until(
            lambda: _has(engineer, "EV-eff", "dcExceedsAc", ["raised"]), what="dcExceedsAc raised"
        )
        await wait_until(
            lambda: _has(engineer, "EV-eff", "lowEfficiency", ["raised", "cleared"]),
            what="lowEfficiency cleared",
        )


async def test_an_unlinked_vehicle_raises_no_efficiency_alert(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
) -> None:
    async with listening(mosquitto) as engineer:
        running = await start_gateway()
        for minute in range(6):
            await publisher.publish(
                "fleet/vehicle/EV-free", vehicle("EV-free", minute, kwh=1), qos=1
            )
        await wait_until(lambda: _committed(running, 6), what="readings committed")
        await asyncio.sleep(1.0)
        assert [e for e in engineer.events if e["deviceId"] == "EV-free"] == []


async def _committed(running: Any, messages: int) -> bool:
    return bool(running.gateway.metrics.messages._value.get() >= messages)


async def test_bad_payloads_from_one_device_raise_an_alert(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
) -> None:
    async with listening(mosquitto) as engineer:
        await start_gateway(alert_check_interval_s=0.5, bad_payloads_threshold=3)
        for _ in range(3):
            await publisher.publish("fleet/meter/M-broken", b'{"voltage": "high"}', qos=1)
        await wait_until(
            lambda: _has(engineer, "M-broken", "badPayloads", ["raised"]), what="badPayloads raised"
        )
        [event] = [e for e in engineer.events if e["deviceId"] == "M-broken"]
        assert event["value"] == 3


async def test_a_restart_neither_repeats_a_raise_nor_loses_a_clear(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    async with listening(mosquitto) as engineer:
        first = await start_gateway()
        for name in ("EV-still-hot", "EV-cooled"):
            await publisher.publish(f"fleet/vehicle/{name}", vehicle(name, 0, 60), qos=1)
        for name in ("EV-still-hot", "EV-cooled"):
            await wait_until(
                lambda name=name: _has(engineer, name, "batteryOverTemp", ["raised"]),
                what=f"{name} raised",
            )
        await first.close()
        # While the gateway is away one battery stays hot and one cools; the readings wait in
        # the broker for the gateway's session.
        await publisher.publish("fleet/vehicle/EV-still-hot", vehicle("EV-still-hot", 1, 61), qos=1)
        await publisher.publish("fleet/vehicle/EV-cooled", vehicle("EV-cooled", 1, 30), qos=1)
        second = await start_gateway()
        await wait_until(
            lambda: _has(engineer, "EV-cooled", "batteryOverTemp", ["raised", "cleared"]),
            what="the clear that happened while the gateway was away",
        )
        await asyncio.sleep(1.5)  # a full round and a reading round have run since
        assert engineer.of("EV-still-hot", "batteryOverTemp") == ["raised"]
        await second.close()
        # And a third start, with nothing new: still no repeat of either.
        await start_gateway()
        await asyncio.sleep(1.5)
        assert engineer.of("EV-still-hot", "batteryOverTemp") == ["raised"]
        assert engineer.of("EV-cooled", "batteryOverTemp") == ["raised", "cleared"]
    assert await count(database_url, "SELECT count(*) FROM alert") == 2
    assert (
        await count(database_url, "SELECT count(*) FROM alert_event WHERE published_at IS NULL")
        == 0
    )


async def test_an_alert_storm_neither_blocks_ingestion_nor_loses_alerts(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    devices = 300
    async with listening(mosquitto) as engineer:
        running = await start_gateway(offline_after_s=2.0, alert_check_interval_s=0.5)
        for device in range(devices):
            await publisher.publish(f"fleet/meter/S-{device}", meter(0), qos=1)
        # Every one of them falls silent at once; meanwhile another device keeps sending.
        for minute in range(1, 15):
            await publisher.publish("fleet/vehicle/EV-alive", vehicle("EV-alive", minute), qos=1)
            await asyncio.sleep(0.25)
        await wait_until(
            lambda: _offline_raised(engineer, devices),
            seconds=30,
            what="every offline alert published",
        )
        assert await count(database_url, "SELECT count(*) FROM vehicle_reading") == 14
        assert (
            await count(
                database_url,
                "SELECT count(*) FROM alert WHERE rule = 'deviceOffline'"
                " AND device_name LIKE 'S-%%'",
            )
            == devices
        )
        assert running.gateway.alert_publisher is not None


async def _offline_raised(listener: AlertListener, devices: int) -> bool:
    raised = {
        e["deviceId"]
        for e in listener.events
        if e["rule"] == "deviceOffline" and e["state"] == "raised"
    }
    return len({d for d in raised if d.startswith("S-")}) == devices


def test_worst_value_and_sentences() -> None:
    settings = Settings.from_env({})
    assert worse("lowEfficiency", 0.8, 0.7, settings)
    assert not worse("batteryOverTemp", 60, 58, settings)
    assert worse("voltageOutOfRange", 250, 190, settings)  # 40 V off beats 20 V off
    # against the meter's own nominal voltage: 330 V is 70 V off 400 V, 460 V only 60 V
    assert worse("voltageOutOfRange", 460, 330, settings, nominal=400)
    assert not worse("voltageOutOfRange", 460, 330, settings)
    text = describe("batteryOverTemp", "raised", "EV-1", 58.5, 55)
    assert text == "Battery over temperature on EV-1: 58.5 °C, threshold 55.0 °C."
    assert Observation("vehicle", "EV-1", "batteryOverTemp", 58.5, 55, "raise").verdict == "raise"


async def test_alert_values_are_the_values_devices_sent(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    async with listening(mosquitto) as engineer:
        await start_gateway(voltage_min_duration_s=0)
        await publisher.publish("fleet/meter/M-exact", meter(0, 404.9), qos=1)
        await wait_until(
            lambda: _has(engineer, "M-exact", "voltageOutOfRange", ["raised"]), what="raised"
        )
    [event] = [e for e in engineer.events if e["deviceId"] == "M-exact"]
    assert event["value"] == 404.9  # not 404.8999938964844, the float4 widened
    assert await query(database_url, "SELECT value FROM alert") == [(404.9,)]
