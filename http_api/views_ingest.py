"""Ingestion over HTTP for devices without MQTT: validated exactly as the gateway does (the same
gateway.readings code), then published to the device's topic so the gateway stays the one writer.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from aiohttp import web

from gateway.readings import (
    DEVICE_ID_PATTERN,
    DEVICE_ID_RULE,
    MAX_NESTING,
    DeviceKind,
    Limits,
    decode_message,
    nesting_exceeds,
)
from http_api.errors import ApiError, InvalidBodyError
from http_api.keys import PUBLISHER, SETTINGS
from http_api.render import json


class _Kind(msgspec.Struct, rename="camel"):
    """Just enough of a reading to tell a meter's from a vehicle's."""

    meter_id: Any = msgspec.UNSET
    vehicle_id: Any = msgspec.UNSET
    kwh_consumed_ac: Any = msgspec.UNSET
    kwh_delivered_dc: Any = msgspec.UNSET


class InvalidReadingError(ApiError):
    """The reading would be dead-lettered by the gateway; the reason says why."""

    code = "invalidReading"


class ReadingTooLargeError(InvalidReadingError):
    """The reading is above MAX_PAYLOAD_BYTES, which the gateway dead-letters."""

    status = 413
    code = "readingTooLarge"


# Checked before msgspec parses anything: it parses nested JSON recursively, and a few thousand
# levels exhaust the stack (RecursionError, a 500).
TOO_DEEP: Final = (
    f"malformed JSON: nested deeper than {MAX_NESTING} levels of objects and arrays"
    " (or unbalanced brackets)"
)
_DEVICE_ID: Final = re.compile(DEVICE_ID_PATTERN)
_KIND: Final = msgspec.json.Decoder(_Kind)
_LIST: Final = msgspec.json.Decoder(list[msgspec.Raw])


def _topic(raw: bytes) -> tuple[DeviceKind, str]:
    """The device's topic; raises InvalidReadingError if the reading does not say which."""
    try:
        probe = _KIND.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidReadingError(f"invalid reading: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidReadingError(f"malformed JSON: {exc}") from None
    is_meter = probe.kwh_consumed_ac is not msgspec.UNSET or probe.meter_id is not msgspec.UNSET
    is_vehicle = (
        probe.kwh_delivered_dc is not msgspec.UNSET or probe.vehicle_id is not msgspec.UNSET
    )
    if is_meter == is_vehicle:
        raise InvalidReadingError(
            "cannot tell the device: a meter reading has meterId and kwhConsumedAc, "
            "a vehicle reading vehicleId and kwhDeliveredDc"
        )
    kind: DeviceKind = "meter" if is_meter else "vehicle"
    device = probe.meter_id if is_meter else probe.vehicle_id
    field = "meterId" if is_meter else "vehicleId"
    if device is msgspec.UNSET:
        raise InvalidReadingError(f"{field} is required over HTTP (MQTT has it in the topic)")
    # The whole string, so that nothing but an id reaches the topic: a newline there makes the
    # broker drop the API's connection.
    if not isinstance(device, str) or not _DEVICE_ID.fullmatch(device):
        shown = repr(device)[:80]
        raise InvalidReadingError(f"invalid {field} {shown}: expected {DEVICE_ID_RULE}", field)
    return kind, device


def _validate(raw: bytes, now: datetime, limits: Limits) -> str:
    """The topic a sound reading goes to; InvalidReadingError with the gateway's reason."""
    if len(raw) > limits.max_payload_bytes:
        raise ReadingTooLargeError(
            f"a reading of {len(raw)} bytes is above the limit of {limits.max_payload_bytes}"
            " bytes (MAX_PAYLOAD_BYTES)"
        )
    if nesting_exceeds(raw):
        raise InvalidReadingError(TOO_DEEP)
    kind, device = _topic(raw)
    topic = f"fleet/{kind}/{device}"
    decoded = decode_message(topic, raw, now, limits)
    if decoded.rejects:
        raise InvalidReadingError(decoded.rejects[0].reason)
    return topic


def _limits(request: web.Request) -> Limits:
    settings = request.app[SETTINGS]
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        max_age=timedelta(days=settings.max_reading_age_days),
    )


async def one(request: web.Request) -> web.Response:
    raw = await request.read()
    topic = _validate(raw, datetime.now(UTC), _limits(request))
    await request.app[PUBLISHER].publish(topic, raw)
    return json({"status": "accepted", "topic": topic}, status=202)


async def batch(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await request.read()
    # A batch is an array of readings: one level more than a reading may have.
    if nesting_exceeds(body, MAX_NESTING + 1):
        raise InvalidBodyError(f"expected a JSON array of readings: {TOO_DEEP}")
    try:
        elements = _LIST.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBodyError(f"expected a JSON array of readings: {exc}") from None
    if not 1 <= len(elements) <= settings.max_batch_readings:
        raise InvalidBodyError(
            f"a batch holds 1 to {settings.max_batch_readings} readings, not {len(elements)}"
        )
    now, limits = datetime.now(UTC), _limits(request)
    results: list[dict[str, Any]] = []
    sound: list[tuple[str, bytes]] = []
    for index, element in enumerate(elements):
        raw = bytes(element)
        try:
            topic = _validate(raw, now, limits)
        except InvalidReadingError as exc:
            rejected = {"index": index, "status": "rejected", "reason": exc.message}
            if exc.parameter is not None:
                rejected["parameter"] = exc.parameter
            results.append(rejected)
            continue
        sound.append((topic, raw))
        results.append({"index": index, "status": "accepted", "topic": topic})
    publisher = request.app[PUBLISHER]
    # A failure here answers 503: some readings may be stored already, and sending the batch
    # again is safe (a repeated reading is stored once).
    await asyncio.gather(*(publisher.publish(topic, raw) for topic, raw in sound))
    accepted = len(sound)
    status = 202 if accepted == len(elements) else 207 if accepted else 400
    return json(
        {"accepted": accepted, "rejected": len(elements) - accepted, "results": results},
        status=status,
    )
