"""Ingestion over HTTP for devices without MQTT: validated exactly as the gateway does (the same
gateway.readings code), refused under closed enrolment as the gateway refuses it (the same
gateway.registry question), then published to the device's topic so the gateway stays the one
writer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Literal, NamedTuple

import msgspec
from aiohttp import web
from msgspec import UNSET, UnsetType

from gateway import registry
from gateway.readings import (
    DEVICE_ID_PATTERN,
    DEVICE_ID_RULE,
    MAX_NESTING,
    DeviceKind,
    Limits,
    decode_message,
    nesting_exceeds,
)
from http_api.bodies import ErrorCode
from http_api.errors import ApiError, InvalidBodyError
from http_api.keys import POOL, PUBLISHER, SETTINGS
from http_api.render import json


class _Kind(msgspec.Struct, rename="camel"):
    """Just enough of a reading to tell a meter's from a vehicle's."""

    meter_id: Any = msgspec.UNSET
    vehicle_id: Any = msgspec.UNSET
    kwh_consumed_ac: Any = msgspec.UNSET
    kwh_delivered_dc: Any = msgspec.UNSET


class InvalidReadingError(ApiError):
    """The reading would be dead-lettered by the gateway; the reason says why."""

    code: ClassVar[ErrorCode] = "invalidReading"


class ReadingTooLargeError(InvalidReadingError):
    """The reading is above MAX_PAYLOAD_BYTES, which the gateway dead-letters."""

    status = 413
    code = "readingTooLarge"


class UnknownDeviceError(ApiError):
    """Closed enrolment: the reading is sound but its device is not registered, or disabled.
    422 rather than 403: the token may ingest (a 403 says it may not), and sending the same
    reading again cannot succeed until the registry changes."""

    status = 422
    code = "unknownDevice"


class _Device(NamedTuple):
    """The device a reading names: its kind and id."""

    kind: DeviceKind
    device_id: str

    @property
    def topic(self) -> str:
        return f"fleet/{self.kind}/{self.device_id}"

    @property
    def id_field(self) -> str:
        """The reading's field that names the device."""
        return f"{self.kind}Id"


class Accepted(msgspec.Struct):
    """The reading was published to its device's topic and the broker acknowledged it."""

    status: Literal["accepted"]
    topic: str


class BatchItem(msgspec.Struct):
    """One reading of a batch: published to its topic, or rejected (code, reason, field)."""

    index: int  # 0 is the first reading of the batch
    status: Literal["accepted", "rejected"]
    topic: str | UnsetType = UNSET
    code: str | UnsetType = UNSET  # what a POST of this reading alone would answer
    reason: str | UnsetType = UNSET
    parameter: str | UnsetType = UNSET  # the field at fault, if one is


class BatchResult(msgspec.Struct):
    """202 when every reading was published, 207 when some were, 400 when none was."""

    accepted: int
    rejected: int
    results: list[BatchItem]


# Checked before msgspec parses anything: it parses nested JSON recursively, and a few thousand
# levels exhaust the stack (RecursionError, a 500).
TOO_DEEP: Final = (
    f"malformed JSON: nested deeper than {MAX_NESTING} levels of objects and arrays"
    " (or unbalanced brackets)"
)
_DEVICE_ID: Final = re.compile(DEVICE_ID_PATTERN)
_KIND: Final = msgspec.json.Decoder(_Kind)
_LIST: Final = msgspec.json.Decoder(list[msgspec.Raw])


def _device_of(raw: bytes) -> _Device:
    """The reading's device; raises InvalidReadingError if the reading does not say which."""
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
    return _Device(kind, device)


def _validate(raw: bytes, now: datetime, limits: Limits) -> _Device:
    """The device of a sound reading; InvalidReadingError with the gateway's reason."""
    if len(raw) > limits.max_payload_bytes:
        raise ReadingTooLargeError(
            f"a reading of {len(raw)} bytes is above the limit of {limits.max_payload_bytes}"
            " bytes (MAX_PAYLOAD_BYTES)"
        )
    if nesting_exceeds(raw):
        raise InvalidReadingError(TOO_DEEP)
    device = _device_of(raw)
    decoded = decode_message(device.topic, raw, now, limits)
    if decoded.rejects:
        raise InvalidReadingError(decoded.rejects[0].reason)
    return device


async def _refusals(request: web.Request, devices: Iterable[_Device]) -> dict[_Device, ApiError]:
    """The devices closed enrolment refuses, each with its error, in one query for the whole
    request; none under open enrolment, where the gateway registers a device by its reading."""
    named = set(devices)
    if request.app[SETTINGS].enrolment == "open" or not named:
        return {}
    meters = sorted(d.device_id for d in named if d.kind == "meter")
    vehicles = sorted(d.device_id for d in named if d.kind == "vehicle")
    async with request.app[POOL].connection() as conn:
        refused = await registry.refusals(conn, meters, vehicles)
    # The gateway's dead-letter reason, so both sides refuse in the same words.
    return {
        device: UnknownDeviceError(refused[device].reason, device.id_field)
        for device in named
        if device in refused
    }


def _limits(request: web.Request) -> Limits:
    settings = request.app[SETTINGS]
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        max_age=timedelta(days=settings.max_reading_age_days),
    )


def _rejected(index: int, error: ApiError) -> BatchItem:
    parameter = UNSET if error.parameter is None else error.parameter
    return BatchItem(index, "rejected", code=error.code, reason=error.message, parameter=parameter)


async def one(request: web.Request) -> web.Response:
    raw = await request.read()
    device = _validate(raw, datetime.now(UTC), _limits(request))
    refusal = (await _refusals(request, [device])).get(device)
    if refusal is not None:
        raise refusal
    await request.app[PUBLISHER].publish(device.topic, raw)
    return json(Accepted("accepted", device.topic), status=202)


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
    checked: list[_Device | InvalidReadingError] = []
    for element in elements:
        try:
            checked.append(_validate(bytes(element), now, limits))
        except InvalidReadingError as exc:
            checked.append(exc)
    refused = await _refusals(request, (d for d in checked if isinstance(d, _Device)))
    results: list[BatchItem] = []
    sound: list[tuple[str, bytes]] = []
    for index, (element, outcome) in enumerate(zip(elements, checked, strict=True)):
        if isinstance(outcome, InvalidReadingError):
            results.append(_rejected(index, outcome))
        elif outcome in refused:
            results.append(_rejected(index, refused[outcome]))
        else:
            sound.append((outcome.topic, bytes(element)))
            results.append(BatchItem(index, "accepted", topic=outcome.topic))
    publisher = request.app[PUBLISHER]
    # A failure here answers 503: some readings may be stored already, and sending the batch
    # again is safe (a repeated reading is stored once).
    await asyncio.gather(*(publisher.publish(topic, raw) for topic, raw in sound))
    accepted = len(sound)
    status = 202 if accepted == len(elements) else 207 if accepted else 400
    return json(BatchResult(accepted, len(elements) - accepted, results), status=status)
