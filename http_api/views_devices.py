"""The device registry over HTTP (scope 'admin'): create, import, list, show, change, disable,
rotate the secret of and delete devices."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, TypeVar, cast

import msgspec
from aiohttp import web

from gateway.readings import DeviceId, DeviceKind, nesting_exceeds
from gateway.registry import KINDS, STATES, DeviceFilter, DeviceState
from http_api import devices, params
from http_api.device_bodies import (
    SITE_PATTERN,
    SITE_RULE,
    TAG_PATTERN,
    TAG_RULE,
    MeterChange,
    NewDevice,
    VehicleChange,
    invalid_field,
)
from http_api.device_import import rows_from_csv, rows_from_json
from http_api.errors import InvalidBodyError, InvalidParameterError, UnsupportedMediaTypeError
from http_api.keys import POOL
from http_api.read_pools import read_pool
from http_api.render import json

T = TypeVar("T")

_NEW: Final = msgspec.json.Decoder(NewDevice)
_METER_CHANGE: Final = msgspec.json.Decoder(MeterChange)
_VEHICLE_CHANGE: Final = msgspec.json.Decoder(VehicleChange)
# A device (1) whose metadata and tags nest once more (2).
_NESTING: Final = 2
_Key = tuple[DeviceKind, DeviceId]
_KEY_DECODER: Final = msgspec.json.Decoder(_Key)
_SITE: Final = re.compile(SITE_PATTERN)
_TAG: Final = re.compile(TAG_PATTERN)
_CSV: Final = "text/csv"
_JSON: Final = "application/json"


def _decode(raw: bytes, decoder: msgspec.json.Decoder[T], what: str) -> T:
    """The body as one device message; a field that is wrong is a 400 naming it."""
    if nesting_exceeds(raw, _NESTING):
        raise InvalidBodyError(f"invalid {what}: nested deeper than a device's metadata")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        field, message = invalid_field(exc)
        if field is None:
            raise InvalidBodyError(f"invalid {what}: {message}") from None
        raise InvalidParameterError(f"invalid {what}: {message}", field) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBodyError(f"malformed JSON: {exc}") from None


def _device_path(request: web.Request) -> tuple[DeviceKind, str]:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise InvalidParameterError(f"{kind[:80]!r} is not one of {', '.join(KINDS)}", "kind")
    device_id = params.device_id(request.match_info["id"], "id")
    return kind, device_id


def _filter(query: Mapping[str, str]) -> DeviceFilter:
    site, tag = query.get("site"), query.get("tag")
    if site is not None and not (len(site) <= 100 and _SITE.fullmatch(site)):
        raise InvalidParameterError(f"{site[:80]!r} is not a site: {SITE_RULE}", "site")
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidParameterError(f"{tag[:80]!r} is not a tag: {TAG_RULE}", "tag")
    return DeviceFilter(
        kind=cast("DeviceKind | None", params.one_of(query, "kind", KINDS)),
        state=cast("DeviceState | None", params.one_of(query, "state", STATES)),
        site=site,
        tag=tag,
        after=params.decode_json_cursor(query, _KEY_DECODER),
    )


async def create(request: web.Request) -> web.Response:
    body = _decode(await request.read(), _NEW, "device")
    async with request.app[POOL].connection() as conn:
        created = await devices.create(conn, body)
    return json(created, status=201)


async def import_(request: web.Request) -> web.Response:
    """CSV (text/csv, a header row) or JSON (an array; also without a Content-Type, as the
    other routes take JSON); 207 when some rows are refused."""
    raw = await request.read()
    if request.content_type == _CSV:
        rows = rows_from_csv(raw)
    elif request.content_type == _JSON or "Content-Type" not in request.headers:
        rows = rows_from_json(raw)
    else:
        raise UnsupportedMediaTypeError(
            f"an import is {_CSV} (with a header row) or {_JSON} (an array), "
            f"not {request.content_type!r}",
            "Content-Type",
        )
    async with request.app[POOL].connection() as conn:
        result = await devices.import_rows(conn, rows)
    return json(result, status=207 if result.errors else 200)


async def listing(request: web.Request) -> web.Response:
    where = _filter(request.query)
    limit = params.integer(request.query, "limit", 100, 1, 1000)
    async with read_pool(request).connection() as conn:
        found = await devices.page(conn, where, limit)
    return json(found)


async def show(request: web.Request) -> web.Response:
    kind, device_id = _device_path(request)
    async with read_pool(request).connection() as conn:
        return json(await devices.find(conn, kind, device_id))


async def update(request: web.Request) -> web.Response:
    kind, device_id = _device_path(request)
    raw = await request.read()
    body: MeterChange | VehicleChange
    if kind == "meter":
        body = _decode(raw, _METER_CHANGE, "change")
    else:
        body = _decode(raw, _VEHICLE_CHANGE, "change")
    async with request.app[POOL].connection() as conn:
        return json(await devices.update(conn, kind, device_id, body))


async def rotate_secret(request: web.Request) -> web.Response:
    kind, device_id = _device_path(request)
    async with request.app[POOL].connection() as conn:
        return json(await devices.rotate_secret(conn, kind, device_id))


async def disable(request: web.Request) -> web.Response:
    kind, device_id = _device_path(request)
    async with request.app[POOL].connection() as conn:
        return json(await devices.disable(conn, kind, device_id))


async def delete(request: web.Request) -> web.Response:
    kind, device_id = _device_path(request)
    async with request.app[POOL].connection() as conn:
        return json(await devices.delete(conn, kind, device_id))
