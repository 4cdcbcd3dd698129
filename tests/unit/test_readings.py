"""Decoding and validation, without services: what is kept, what is rejected and why."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import msgspec.inspect
import pytest

from gateway.readings import Limits, MeterReading, VehicleReading, decode_message, parse_topic

NOW = datetime(2026, 2, 9, 8, 46, tzinfo=UTC)
LIMITS = Limits(
    max_payload_bytes=4096, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=31)
)

METER = {
    "meterId": "MTR-101",
    "kwhConsumedAc": 12.8,
    "voltage": 228,
    "timestamp": "2026-02-09T08:45:00Z",
}
VEHICLE = {
    "vehicleId": "EV-101",
    "soc": 75,
    "kwhDeliveredDc": 10.5,
    "batteryTemp": 35,
    "timestamp": "2026-02-09T08:45:00Z",
}


def decode(topic: str, payload: object) -> tuple[list[object], list[str]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    decoded = decode_message(topic, raw, NOW, LIMITS)
    return list(decoded.readings), [reject.reason for reject in decoded.rejects]


def test_meter_reading_is_decoded_with_its_values() -> None:
    readings, rejects = decode("fleet/meter/MTR-101", METER)
    assert rejects == []
    assert readings == [
        MeterReading(
            kwh_consumed_ac=12.8,
            voltage=228.0,
            timestamp=datetime(2026, 2, 9, 8, 45, tzinfo=UTC),
            meter_id="MTR-101",
        )
    ]


def test_vehicle_reading_is_decoded_with_its_values() -> None:
    readings, rejects = decode("fleet/vehicle/EV-101", VEHICLE)
    assert rejects == []
    [reading] = readings
    assert isinstance(reading, VehicleReading)
    assert (reading.soc, reading.kwh_delivered_dc, reading.battery_temp) == (75, 10.5, 35)


def test_id_in_payload_is_optional_and_unknown_fields_are_ignored() -> None:
    payload = {k: v for k, v in METER.items() if k != "meterId"} | {"firmware": "2.1"}
    readings, rejects = decode("fleet/meter/MTR-101", payload)
    assert rejects == []
    assert len(readings) == 1


def test_timestamp_with_an_offset_is_kept_as_the_same_instant() -> None:
    readings, _ = decode(
        "fleet/meter/M1", METER | {"meterId": "M1", "timestamp": "2026-02-09T09:45:00+01:00"}
    )
    assert readings[0].timestamp == datetime(2026, 2, 9, 8, 45, tzinfo=UTC)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("topic", "payload", "reason_contains"),
    [
        ("fleet/meter/MTR-101", b"{not json", "malformed"),
        ("fleet/meter/MTR-101", b"", "malformed JSON: Input data was truncated"),
        ("fleet/meter/MTR-101", b"\xff\xfe", "malformed JSON"),
        ("fleet/meter/MTR-101", METER | {"voltage": "228"}, "$.voltage"),
        ("fleet/meter/MTR-101", METER | {"kwhConsumedAc": -1}, "$.kwhConsumedAc"),
        ("fleet/meter/MTR-101", METER | {"voltage": 0}, "$.voltage"),
        (
            "fleet/meter/MTR-101",
            b'{"kwhConsumedAc": NaN, "voltage": 228, "timestamp": "2026-02-09T08:45:00Z"}',
            "malformed",
        ),
        (
            "fleet/meter/MTR-101",
            b'{"kwhConsumedAc": 1e999, "voltage": 228, "timestamp": "2026-02-09T08:45:00Z"}',
            "kwhConsumedAc",
        ),
        (
            "fleet/meter/MTR-101",
            {k: v for k, v in METER.items() if k != "voltage"},
            "missing required field `voltage`",
        ),
        ("fleet/meter/MTR-101", METER | {"meterId": "MTR-999"}, "does not match"),
        ("fleet/meter/MTR-101", METER | {"timestamp": "2026-02-09T08:45:00"}, "timezone"),
        ("fleet/meter/MTR-101", METER | {"timestamp": "yesterday"}, "$.timestamp"),
        ("fleet/meter/MTR-101", METER | {"timestamp": "2026-02-09T09:00:00Z"}, "in the future"),
        ("fleet/meter/MTR-101", METER | {"timestamp": "2025-12-01T09:00:00Z"}, "older than"),
        ("fleet/vehicle/EV-101", VEHICLE | {"soc": 100.5}, "$.soc"),
        ("fleet/vehicle/EV-101", VEHICLE | {"batteryTemp": 400}, "$.batteryTemp"),
        ("fleet/vehicle/EV-101", VEHICLE | {"soc": True}, "$.soc"),
        ("fleet/vehicle/EV-101", [], "length >= 1"),
        ("fleet/vehicle/EV-101", 42, "Expected `object`"),
        ("fleet/charger/C1", VEHICLE, "unknown topic"),
        ("fleet/vehicle/EV-101/extra", VEHICLE, "unknown topic"),
        ("fleet/vehicle/bad id!", VEHICLE, "invalid device id"),
        ("fleet/vehicle/" + "x" * 65, VEHICLE, "invalid device id"),
        ("fleet/vehicle/EV-101", b"x" * 5000, "exceeds the 4096-byte limit"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(
    topic: str, payload: object, reason_contains: str
) -> None:
    readings, rejects = decode(topic, payload)
    assert readings == []
    assert len(rejects) == 1
    assert reason_contains in rejects[0]


def test_rejected_oversized_payload_keeps_its_first_kib_and_size() -> None:
    decoded = decode_message("fleet/meter/M1", b"y" * 5000, NOW, LIMITS)
    [reject] = decoded.rejects
    assert reject.payload == b"y" * 1024
    assert reject.payload_bytes == 5000


def test_array_with_one_bad_element_keeps_the_good_ones() -> None:
    good = [VEHICLE | {"timestamp": f"2026-02-09T08:4{i}:00Z"} for i in range(3)]
    bad = VEHICLE | {"soc": -5}
    decoded = decode_message(
        "fleet/vehicle/EV-101", json.dumps([good[0], bad, *good[1:]]).encode(), NOW, LIMITS
    )
    assert [r.timestamp.minute for r in decoded.readings] == [40, 41, 42]
    [reject] = decoded.rejects
    assert reject.reason.startswith("element 1 of 4")
    assert "$.soc" in reject.reason
    assert json.loads(reject.payload) == bad
    assert reject.device_id == "EV-101"


def test_malformed_array_is_rejected_whole() -> None:
    decoded = decode_message("fleet/vehicle/EV-101", b'[{"soc": 1}, {', NOW, LIMITS)
    assert decoded.readings == []
    assert decoded.rejects[0].reason.startswith("array of readings")


@pytest.mark.parametrize("topic", ["fleet/meter/a.b_c-D9", "fleet/vehicle/" + "z" * 64])
def test_valid_device_ids(topic: str) -> None:
    kind, device_id = parse_topic(topic)
    assert topic == f"fleet/{kind}/{device_id}"


@pytest.mark.parametrize("reading", [MeterReading, VehicleReading])
def test_every_number_is_bounded_on_both_sides_so_infinity_cannot_pass(reading: type) -> None:
    # 1e999 decodes to inf; only a bound on each side stops +-inf (nothing else checks).
    numbers = [f for f in msgspec.inspect.type_info(reading).fields if f.name != "timestamp"]
    for field in numbers:
        if isinstance(field.type, msgspec.inspect.FloatType):
            assert field.type.ge is not None or field.type.gt is not None, field.name
            assert field.type.le is not None or field.type.lt is not None, field.name
    for name in ("kwhConsumedAc", "voltage") if reading is MeterReading else ("soc", "batteryTemp"):
        for infinite in ("1e999", "-1e999"):
            raw = json.dumps(METER if reading is MeterReading else VEHICLE).replace(
                f'"{name}": ', f'"{name}": {infinite}, "_": '
            )
            topic = "fleet/meter/MTR-101" if reading is MeterReading else "fleet/vehicle/EV-101"
            decoded = decode_message(topic, raw.encode(), NOW, LIMITS)
            assert not decoded.readings
            assert "out of range" in decoded.rejects[0].reason
