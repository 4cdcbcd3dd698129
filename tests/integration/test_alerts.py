"""Alerts end to end: a real broker, a real subscriber on fleet/alerts/#, the gateway in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg
import pytest

from gateway.alert_messages import describe
from gateway.alert_rules import Observation, Scope, worse
from gateway.alerts import AlertEvaluator
from gateway.database import apply_schema
from gateway.registry import DeviceRecord, register
from gateway.settings import Settings
from tests.alert_helpers import AlertListener, clear_retained_alerts, listening
from tests.services import Mosquitto
from tests.support import RunningGateway, StartGateway, count, equals, query, wait_until

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Rounds driven by readings gather for 50 ms, not a second: the tests wait on what the
    gateway did (stored rows, published events), never for fixed times."""
    return settings.replace(alert_gather_s=0.05)


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
async def _clear_retained_alerts(mosquitto: Mosquitto) -> AsyncIterator[None]:
    yield
    await clear_retained_alerts(mosquitto)


async def test_battery_over_temperature_raises_once_holds_in_the_band_and_clears_once(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    async with listening(mosquitto) as engineer:
        running = await start_gateway()
        topic = "fleet/vehicle/EV-hot"

        async def send(minute: int, temp: float) -> None:
            """Publish a reading and wait until it is stored, then judge it once more (the
            gateway judges it too, in a round of its own): a reading batched with the next one
            would otherwise never be judged on its own."""
            await publisher.publish(topic, vehicle("EV-hot", minute, temp), qos=1)
            await wait_until(lambda: _stored(database_url, "vehicle", "EV-hot", minute))
            await _evaluator(running).evaluate(Scope([], ["EV-hot"]), time_driven=False)

        for minute, temp in enumerate([40, 56, 58.5, 57]):
            await send(minute, temp)
        await wait_until(
            lambda: _has(engineer, "EV-hot", "batteryOverTemp", ["raised"]), what="one raise"
        )
        await send(5, 52)  # in the band: holds
        assert await _alerts(database_url, "EV-hot") == [("batteryOverTemp", True, 58.5)]
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
        assert raised["clearValue"] is None
        assert cleared["state"] == "cleared"
        assert cleared["value"] == 58.5  # the worst value seen while raised
        assert cleared["clearValue"] == 49
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


def _evaluator(running: RunningGateway) -> AlertEvaluator:
    assert running.gateway.alerts is not None
    return running.gateway.alerts


async def _stored(database_url: str, kind: str, name: str, minute: int) -> bool:
    """Is the device's latest reading the one of ``minute``?"""
    latest = f"SELECT count(*) FROM {kind} WHERE name = %s AND ts = %s"
    return await count(database_url, latest, name, BASE + timedelta(minutes=minute)) == 1


async def _alerts(database_url: str, device: str) -> list[tuple[Any, ...]]:
    """(rule, raised now, worst value) of the device's alerts, oldest first."""
    return await query(
        database_url,
        "SELECT rule, cleared_at IS NULL, value FROM alert WHERE device_name = %s"
        " ORDER BY alert_id",
        device,
    )


async def _published(database_url: str) -> bool:
    unpublished = "SELECT count(*) FROM alert_event WHERE published_at IS NULL"
    return await count(database_url, unpublished) == 0


async def _has(listener: AlertListener, device: str, rule: str, states: list[str]) -> bool:
    return listener.of(device, rule) == states


async def _removed(listener: AlertListener, topic: str) -> bool:
    return topic in listener.removals


async def test_a_late_subscriber_sees_raised_alerts_and_not_cleared_ones(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    running = await start_gateway()
    await publisher.publish("fleet/vehicle/EV-late1", vehicle("EV-late1", 0, 70), qos=1)
    await publisher.publish("fleet/vehicle/EV-late2", vehicle("EV-late2", 0, 70), qos=1)
    await wait_until(
        lambda: equals(_alerts(database_url, "EV-late2"), [("batteryOverTemp", True, 70)])
    )
    await publisher.publish("fleet/vehicle/EV-late2", vehicle("EV-late2", 1, 20), qos=1)
    await wait_until(lambda: _stored(database_url, "vehicle", "EV-late2", 1))
    await _evaluator(running).evaluate(Scope([], ["EV-late2"]), time_driven=False)
    await wait_until(lambda: _published(database_url), what="the raises and the clear published")
    async with listening(mosquitto) as engineer:
        await engineer.barrier()  # every retained alert has arrived
        assert engineer.of("EV-late1", "batteryOverTemp") == ["raised"]
        assert engineer.of("EV-late2", "batteryOverTemp") == []


async def test_voltage_out_of_range_is_raised_only_after_the_minimum_duration(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    async with listening(mosquitto) as engineer:
        running = await start_gateway(voltage_min_duration_s=120)
        topic = "fleet/meter/M-volt"
        for minute, volts in enumerate([230, 262, 263]):  # out of range for 60 s only
            await publisher.publish(topic, meter(minute, volts), qos=1)
        await wait_until(lambda: _stored(database_url, "meter", "M-volt", 2))
        assert await _evaluator(running).evaluate(Scope(["M-volt"], []), time_driven=False) == 0
        assert await _alerts(database_url, "M-volt") == []
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
        # A window of 6 readings, so that the 6 sent cover it (EFFICIENCY_MIN_COVERAGE).
        await start_gateway(efficiency_min_ac_kwh=1.0, efficiency_window_s=360)
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
        # Then DC runs ahead of AC: 1.8 AC against 3.6 DC over the window (minutes 3-8).
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
    database_url: str,
) -> None:
    async with listening(mosquitto) as engineer:
        running = await start_gateway(efficiency_window_s=360)
        for minute in range(6):
            await publisher.publish(
                "fleet/vehicle/EV-free", vehicle("EV-free", minute, kwh=1), qos=1
            )
        await wait_until(lambda: _stored(database_url, "vehicle", "EV-free", 5))
        assert await _evaluator(running).evaluate(Scope(None, None), time_driven=True) == 0
        assert await _alerts(database_url, "EV-free") == []
        await engineer.barrier()
        assert [e for e in engineer.events if e["deviceId"] == "EV-free"] == []


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
        # The hot one's new reading judged (worse, not raised again), everything published.
        await wait_until(lambda: _stored(database_url, "vehicle", "EV-still-hot", 1))
        await _evaluator(second).evaluate(Scope(None, None), time_driven=True)
        await wait_until(
            lambda: equals(_alerts(database_url, "EV-still-hot"), [("batteryOverTemp", True, 61)])
        )
        await wait_until(lambda: _published(database_url), what="everything published")
        await engineer.barrier()
        assert engineer.of("EV-still-hot", "batteryOverTemp") == ["raised"]
        await second.close()
        # And a third start, with nothing new: still no repeat of either.
        third = await start_gateway()
        assert await _evaluator(third).evaluate(Scope(None, None), time_driven=True) == 0
        await engineer.barrier()
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
        # Every one of them falls silent at once; meanwhile another device keeps sending, each
        # reading once the one before is stored, until every offline alert is published: each
        # is stored within 5 s however busy the alerts are.
        sent = 0
        while not await _offline_raised(engineer, devices):
            sent += 1
            assert sent <= 2000, "not every offline alert was published"
            await publisher.publish("fleet/vehicle/EV-alive", _alive(sent), qos=1)
            await wait_until(
                lambda sent=sent: equals(_readings(database_url), sent),
                seconds=5,
                what=f"reading {sent} of the device that keeps sending",
            )
        assert sent > 1  # readings went on arriving while the alerts were raised
        assert (
            await count(
                database_url,
                "SELECT count(*) FROM alert WHERE rule = 'deviceOffline'"
                " AND device_name LIKE 'S-%%'",
            )
            == devices
        )
        assert running.gateway.alert_publisher is not None


async def _readings(database_url: str) -> int:
    return await count(database_url, "SELECT count(*) FROM vehicle_reading")


def _alive(number: int) -> bytes:
    at = BASE + timedelta(milliseconds=100 * number)
    reading = {"soc": 50, "kwhDeliveredDc": 0.1, "batteryTemp": 30, "timestamp": iso(at)}
    return json.dumps(reading).encode()


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
