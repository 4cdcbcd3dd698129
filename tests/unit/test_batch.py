"""Batching and settings, without services."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from gateway.batch import Batch, BatchLimits, Received, refused_by_database
from gateway.reading_kinds import to_mwh
from gateway.readings import Limits, decode_message
from gateway.settings import OPTIONS, MqttAddress, Settings, SettingsError
from tests.services import PROJECT

NOW = datetime(2026, 2, 9, 23, 59, tzinfo=UTC)
LIMITS = Limits(4096, timedelta(minutes=5), timedelta(days=31))


def received(topic: str, payload: bytes, at_monotonic: float = 0.0) -> Received:
    return Received(
        topic,
        payload,
        NOW,
        at_monotonic,
        mid=1,
        qos=1,
        connection=1,
        decoded=decode_message(topic, payload, NOW, LIMITS),
    )


METER = (
    b'{"kwhConsumedAc": 12.8, "voltage": 228, '
    b'"timestamp": "2026-02-10T00:30:00+01:00"}'
)  # 23:30 UTC on the 9th


def test_batch_is_full_at_its_size_and_old_after_its_age() -> None:
    limits = BatchLimits(messages=2, items=1000, payload_bytes=1 << 20)
    batch = Batch()
    assert batch.age_s(100.0) == 0.0
    batch.add(received("fleet/meter/M1", METER))
    first_added = batch.started_monotonic
    assert not batch.is_full(limits)
    batch.add(received("fleet/meter/M2", METER))
    assert batch.is_full(limits)
    assert batch.age_s(first_added + 0.05) == pytest.approx(0.05)


def test_batch_is_full_at_its_budget_of_readings_or_bytes_whatever_the_messages() -> None:
    junk = b"[" + b",".join([b"{}"] * 50) + b"]"  # 50 dead letters in one message
    by_items = Batch()
    by_items.add(received("fleet/meter/M1", junk))
    assert by_items.items == 51
    assert by_items.is_full(BatchLimits(messages=1000, items=50, payload_bytes=1 << 20))
    assert not by_items.is_full(BatchLimits(messages=1000, items=52, payload_bytes=1 << 20))
    by_bytes = Batch()
    by_bytes.add(received("fleet/meter/M1", METER))
    assert by_bytes.is_full(BatchLimits(messages=1000, items=1000, payload_bytes=len(METER)))


def test_rows_carry_exact_milliwatt_hours_and_dead_letters() -> None:
    batch = Batch()
    batch.add(received("fleet/meter/M1", METER))
    batch.add(received("fleet/meter/M1", b"{oops"))
    meters, vehicles, dead, overflow = batch.rows()
    assert overflow == []
    assert meters == [("M1", datetime(2026, 2, 9, 23, 30, tzinfo=UTC), 12_800_000, 228.0, NOW)]
    assert vehicles == []
    assert [(topic, name, reason.split(":")[0]) for _, topic, _, name, reason, _, _ in dead] == [
        ("fleet/meter/M1", "M1", "malformed JSON")
    ]


def test_to_mwh_rounds_away_binary_noise() -> None:
    assert to_mwh(12.8) == 12_800_000
    assert to_mwh(0.1 + 0.2) == 300_000
    assert sum(to_mwh(0.1) for _ in range(10)) == to_mwh(1.0)


def test_partition_days_are_utc_days() -> None:
    batch = Batch()
    batch.add(received("fleet/meter/M1", METER))
    late_evening_west = datetime(2026, 2, 8, 20, 0, tzinfo=timezone(timedelta(hours=-5)))
    payload = (
        b'{"soc": 5, "kwhDeliveredDc": 1, "batteryTemp": 20, "timestamp": "'
        + late_evening_west.isoformat().encode()
        + b'"}'
    )
    batch.add(received("fleet/vehicle/V1", payload))
    assert batch.reading_days() == {("meter", date(2026, 2, 9)), ("vehicle", date(2026, 2, 9))}


def test_split_and_refusal_keep_every_message() -> None:
    batch = Batch()
    for device in range(3):
        batch.add(received(f"fleet/meter/M{device}", METER))
    singles = batch.split()
    assert [len(single) for single in singles] == [1, 1, 1]
    refused = refused_by_database(singles[1].messages[0], "value out of range")
    assert refused.decoded.readings == []
    [reject] = refused.decoded.rejects
    assert reject.reason == "database refused the message: value out of range"
    assert reject.payload == METER


def test_settings_parse_the_broker_url_with_credentials() -> None:
    address = MqttAddress.parse("mqtt://gw%40fleet:s3cr%2Ft@broker.example:8883")
    assert address == MqttAddress("broker.example", 8883, "gw@fleet", "s3cr/t")
    assert MqttAddress.parse("mqtt://localhost").port == 1883


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MQTT_URL", "http://x"),
        ("BATCH_SIZE", "0"),
        ("BATCH_AGE_MS", "soon"),
        ("METRICS_PORT", "-1"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_help_lists_every_environment_variable_and_bad_settings_exit_2() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(option.env in shown for option in OPTIONS)
    refused = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
        env={"BATCH_SIZE": "lots", "PATH": ""},
    )
    assert refused.returncode == 2
    assert "BATCH_SIZE='lots'" in refused.stderr
