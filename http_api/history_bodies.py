"""What the API answers about what arrived: a device's raw readings over a window, and dead
letters. Generated into the OpenAPI document with the other answers (http_api/bodies.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

from gateway.alert_messages import Time
from http_api.bodies import Celsius, Count, Kwh, Percent, Volts, Window


class StoredMeterReading(msgspec.Struct, rename="camel"):
    """One reading of a meter, as stored."""

    taken_at: Time
    consumed_ac: Kwh  # energy of the interval it ends
    voltage: Volts


class StoredVehicleReading(msgspec.Struct, rename="camel"):
    """One reading of a vehicle, as stored."""

    taken_at: Time
    soc: Percent
    delivered_dc: Kwh  # energy of the interval it ends
    battery_temp: Celsius


class MeterReadings(msgspec.Struct, rename="camel"):
    """A meter's readings over a window, oldest first, page by page."""

    meter_id: str
    window: Window
    readings: list[StoredMeterReading]
    next_cursor: str | None


class VehicleReadings(msgspec.Struct, rename="camel"):
    """A vehicle's readings over a window, oldest first, page by page."""

    vehicle_id: str
    window: Window
    readings: list[StoredVehicleReading]
    next_cursor: str | None


class DeadLetter(msgspec.Struct, rename="camel"):
    """A message that could not be stored as readings. Its payload is never sent as raw bytes:
    the first bytes kept in base64 (exact), and a short preview as text (escaped)."""

    dead_letter_id: str
    received_at: Time
    topic: str  # its first 256 characters
    device_kind: Literal["meter", "vehicle"] | None  # null: the topic names no device
    device_id: str | None
    reason: str
    payload_bytes: Count  # the size that arrived
    payload_base64: str  # the first 1,024 bytes kept (of an oversized payload only 1 KiB is)
    payload_preview: str  # the first 160 characters, invalid UTF-8 and controls as \xNN
    payload_truncated: bool  # payloadBase64 holds less than arrived


class DeadLettersCounted(msgspec.Struct, rename="camel"):
    """Dead letters past a device's cap, counted per device and minute instead of kept (the
    device and time filters apply; the reason filter does not: only a sample reason is kept)."""

    dead_letters: Count
    minutes: Count  # rows of (device, minute) that counted them


class DeadLetterList(msgspec.Struct, rename="camel"):
    window: Window
    dead_letters: list[DeadLetter]  # newest first
    counted: DeadLettersCounted
    next_cursor: str | None


RESPONSES: tuple[type[msgspec.Struct], ...] = (MeterReadings, VehicleReadings, DeadLetterList)
