"""Device readings: their wire format, and decoding a message into readings and rejects.

Unknown fields are ignored and the reading is kept: devices gain fields with firmware updates,
and dropping their data for it would lose readings that are otherwise sound. An unknown field may
nest objects or arrays, but a message nests at most ``MAX_NESTING`` levels in all: deeper JSON is
refused before it is parsed, since only a hostile or broken sender writes it and parsing it
recursively could exhaust the stack.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal, NamedTuple, TypeAlias

import msgspec
from msgspec import Meta

DeviceKind: TypeAlias = Literal["meter", "vehicle"]

# \A and \Z, not ^ and $: $ also matches before a trailing newline ("EV-1\n").
DEVICE_ID_PATTERN: Final = r"\A[A-Za-z0-9._-]{1,64}\Z"
DEVICE_ID_RULE: Final = "1-64 characters of [A-Za-z0-9._-]"
DeviceId = Annotated[str, Meta(min_length=1, max_length=64, pattern=DEVICE_ID_PATTERN)]
Energy = Annotated[float, Meta(ge=0, le=1_000_000)]  # kWh of one interval
Voltage = Annotated[float, Meta(gt=0, le=1_000)]  # single or three phase, any grid
Percent = Annotated[float, Meta(ge=0, le=100)]
Celsius = Annotated[float, Meta(ge=-50, le=150)]  # past either end the sensor is broken
Timestamp = Annotated[datetime, Meta(tz=True)]

MAX_READINGS_PER_MESSAGE: Final = 10_000
# An array with more invalid elements than this is refused whole, as one dead letter: past this
# many, the sender is broken or hostile, and judging every element costs more than the message.
MAX_INVALID_ELEMENTS: Final = 100
# Levels of objects and arrays in one message: an array (1) of readings (2), with room for unknown
# fields that nest a little.
MAX_NESTING: Final = 8
KEPT_BYTES_OF_OVERSIZED: Final = 1024
TOPICS_REMEMBERED: Final = 100_000  # parsed topics kept (~200 bytes each), the oldest dropped


class MeterReading(msgspec.Struct, rename="camel", frozen=True):
    """``fleet/meter/{meterId}``: AC energy billed by the grid since the previous reading."""

    kwh_consumed_ac: Energy
    voltage: Voltage
    timestamp: Timestamp
    meter_id: DeviceId | None = None


class VehicleReading(msgspec.Struct, rename="camel", frozen=True):
    """``fleet/vehicle/{vehicleId}``: DC energy into the battery since the previous reading."""

    soc: Percent
    kwh_delivered_dc: Energy
    battery_temp: Celsius
    timestamp: Timestamp
    vehicle_id: DeviceId | None = None


Reading: TypeAlias = MeterReading | VehicleReading

_METER_DECODER: Final = msgspec.json.Decoder(MeterReading)
_VEHICLE_DECODER: Final = msgspec.json.Decoder(VehicleReading)
_ARRAY_DECODER: Final = msgspec.json.Decoder(
    Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_READINGS_PER_MESSAGE)]
)
_DECODERS: Final[
    dict[str, msgspec.json.Decoder[MeterReading] | msgspec.json.Decoder[VehicleReading]]
] = {
    "meter": _METER_DECODER,
    "vehicle": _VEHICLE_DECODER,
}
_ARRAY_DECODERS: Final[
    dict[str, msgspec.json.Decoder[list[MeterReading]] | msgspec.json.Decoder[list[VehicleReading]]]
] = {
    "meter": msgspec.json.Decoder(list[MeterReading]),
    "vehicle": msgspec.json.Decoder(list[VehicleReading]),
}
_DEVICE_ID: Final = re.compile(DEVICE_ID_PATTERN)
_JSON_STRING: Final = re.compile(rb'"[^"]*"')  # once escapes are gone
_EMPTY_CONTAINER: Final = re.compile(rb"\[\]|\{\}")  # one pass removes one level
_NOT_A_BRACKET: Final = bytes(sorted(set(range(256)) - set(b"[]{}")))


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """A message, or one element of an array message, that cannot be stored as a reading."""

    reason: str
    payload: bytes
    payload_bytes: int
    device_kind: DeviceKind | None = None
    device_id: str | None = None


class Decoded(NamedTuple):
    """What one MQTT message holds: the device, its sound readings and its rejected parts.
    (A named tuple: made for every message, at a quarter of a frozen dataclass's cost.)"""

    device_kind: DeviceKind | None
    device_id: str | None
    readings: list[Reading]
    rejects: list[Reject]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int
    max_future_skew: timedelta
    max_age: timedelta


@functools.lru_cache(maxsize=TOPICS_REMEMBERED)
def parse_topic(topic: str) -> tuple[DeviceKind, str]:
    """``fleet/{meter|vehicle}/{deviceId}`` to its kind and id, or ``ValueError`` saying why.
    Remembered: a fleet publishes on the same topics all day (a refusal is not remembered)."""
    levels = topic.split("/")
    if len(levels) != 3 or levels[0] != "fleet" or levels[1] not in _DECODERS:
        raise ValueError(
            f"unknown topic {topic!r}: expected fleet/meter/{{meterId}}"
            " or fleet/vehicle/{vehicleId}"
        )
    kind: DeviceKind = "meter" if levels[1] == "meter" else "vehicle"
    device_id = levels[2]
    if not _DEVICE_ID.match(device_id):
        raise ValueError(
            f"invalid device id {device_id[:80]!r} in topic: expected {DEVICE_ID_RULE}"
        )
    return kind, device_id


def nesting_exceeds(payload: bytes, limit: int = MAX_NESTING) -> bool:
    """True if the JSON in ``payload`` nests objects and arrays deeper than ``limit`` levels, or
    has brackets that do not pair up (then it is malformed anyway). Cheap: a payload with no more
    than ``limit`` brackets is not scanned; others are read in linear passes at C speed, one
    level per pass."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    if b'"' in payload:  # brackets inside strings do not nest: drop escapes, then strings
        unescaped = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
        payload = _JSON_STRING.sub(b"", unescaped)
    brackets = payload.translate(None, _NOT_A_BRACKET)
    for _ in range(limit):
        inner_removed = _EMPTY_CONTAINER.sub(b"", brackets)
        if not inner_removed or inner_removed == brackets:
            break
        brackets = inner_removed
    else:
        return True
    return bool(inner_removed)


def decode_message(topic: str, payload: bytes, received_at: datetime, limits: Limits) -> Decoded:
    """Decode one message; never raises: whatever goes wrong makes the message a dead letter
    whose reason names the exception, so that one message can never stop ingestion."""
    try:
        return _decode_message(topic, payload, received_at, limits)
    except Exception as exc:  # a reason for the dead letter, not a crash
        reason = f"could not be decoded ({type(exc).__name__}): {exc}"[:1000]
        try:
            kind, device_id = parse_topic(topic)
        except ValueError:
            return _rejected(None, None, reason, payload, limits)
        return _rejected(kind, device_id, reason, payload, limits)


def _decode_message(topic: str, payload: bytes, received_at: datetime, limits: Limits) -> Decoded:
    size = len(payload)
    try:
        kind, device_id = parse_topic(topic)
    except ValueError as exc:
        return _rejected(None, None, str(exc), payload, limits)
    if size > limits.max_payload_bytes:
        reason = (
            f"payload of {size} bytes exceeds the {limits.max_payload_bytes}-byte limit"
            f" (first {KEPT_BYTES_OF_OVERSIZED} bytes kept)"
        )
        return _rejected(kind, device_id, reason, payload, limits)
    if nesting_exceeds(payload):
        reason = (
            f"malformed JSON: nested deeper than {MAX_NESTING} levels of objects and arrays"
            " (or unbalanced brackets)"
        )
        return _rejected(kind, device_id, reason, payload, limits)
    if payload[:1] == b"[" or (payload[:1].isspace() and payload.lstrip()[:1] == b"["):
        return _decode_array(kind, device_id, payload, received_at, limits)
    readings: list[Reading] = []
    rejects: list[Reject] = []
    try:
        readings.append(_decode_one(kind, device_id, payload, received_at, limits))
    except ValueError as exc:  # msgspec errors and UnicodeDecodeError are ValueErrors
        rejects.append(Reject(_reason(exc), payload, size, kind, device_id))
    return Decoded(kind, device_id, readings, rejects)


def _decode_array(
    kind: DeviceKind, device_id: str, payload: bytes, received_at: datetime, limits: Limits
) -> Decoded:
    try:  # the usual case, every element sound: one typed decode
        typed: list[Reading] = list(_ARRAY_DECODERS[kind].decode(payload))
        if 1 <= len(typed) <= MAX_READINGS_PER_MESSAGE:
            checked = [_checked(reading, kind, device_id, received_at, limits) for reading in typed]
            return Decoded(kind, device_id, checked, [])
    except ValueError:
        pass
    try:
        elements = _ARRAY_DECODER.decode(payload)
    except ValueError as exc:
        return _rejected(kind, device_id, f"array of readings: {_reason(exc)}", payload, limits)
    readings: list[Reading] = []
    rejects: list[Reject] = []
    count = len(elements)
    first_problem = ""
    for index, element in enumerate(elements):
        raw = bytes(element)
        try:
            readings.append(_decode_one(kind, device_id, raw, received_at, limits))
        except ValueError as exc:
            if len(rejects) == MAX_INVALID_ELEMENTS:
                reason = (
                    f"array of readings: more than {MAX_INVALID_ELEMENTS} of its {count} elements"
                    f" are invalid, so it was refused whole; the first, {first_problem}"
                )
                return _rejected(kind, device_id, reason, payload, limits)
            problem = f"element {index}: {_reason(exc)}"
            first_problem = first_problem or problem
            reason = f"element {index} of {count} (the others were kept if valid): {_reason(exc)}"
            rejects.append(Reject(reason, raw, len(raw), kind, device_id))
    return Decoded(kind, device_id, readings, rejects)


def _decode_one(
    kind: DeviceKind, device_id: str, raw: bytes, received_at: datetime, limits: Limits
) -> Reading:
    return _checked(_DECODERS[kind].decode(raw), kind, device_id, received_at, limits)


def _checked(
    reading: Reading, kind: DeviceKind, device_id: str, received_at: datetime, limits: Limits
) -> Reading:
    """``reading`` if it passes what the type cannot say; ``ValueError`` naming what fails.
    (Every number has bounds on both sides, so 1e999, which decodes to inf, is refused by the
    type; JSON has no NaN.)"""
    payload_id = reading.meter_id if isinstance(reading, MeterReading) else reading.vehicle_id
    if payload_id is not None and payload_id != device_id:
        field = "meterId" if kind == "meter" else "vehicleId"
        raise ValueError(f"{field} {payload_id!r} in payload does not match {device_id!r} in topic")
    if reading.timestamp > received_at + limits.max_future_skew:
        raise ValueError(
            f"timestamp {reading.timestamp.isoformat()} is more than"
            f" {limits.max_future_skew.total_seconds():g} s in the future"
        )
    if reading.timestamp < received_at - limits.max_age:
        raise ValueError(
            f"timestamp {reading.timestamp.isoformat()} is older than"
            f" {limits.max_age.total_seconds() / 86400:g} days"
        )
    return reading


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"payload is not valid UTF-8: {exc}"
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return f"malformed JSON: {exc}"
    return f"invalid reading: {exc}"


def _rejected(
    kind: DeviceKind | None, device_id: str | None, reason: str, payload: bytes, limits: Limits
) -> Decoded:
    kept = (
        payload if len(payload) <= limits.max_payload_bytes else payload[:KEPT_BYTES_OF_OVERSIZED]
    )
    reject = Reject(reason, kept, len(payload), kind, device_id)
    return Decoded(kind, device_id, [], [reject])
