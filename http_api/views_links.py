"""Which meter feeds which vehicle's charger, with the time each link took effect and ended."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from aiohttp import web

from gateway.readings import nesting_exceeds
from http_api import params, queries
from http_api.bodies import Link, LinkList, VehicleLinks
from http_api.errors import InvalidBodyError, InvalidParameterError, NotFoundError
from http_api.keys import POOL
from http_api.read_pools import read_pool
from http_api.render import json, utc


class NewLink(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Link a vehicle to the meter feeding its charger."""

    vehicle_id: str
    meter_id: str
    # When the link took effect (RFC 3339), if earlier than now; checked by params.timestamp.
    since: str | None = None


_NEW_LINK = msgspec.json.Decoder(NewLink)


def _link_body(row: queries.Row) -> Link:
    return Link(
        vehicle_id=row["vehicle_id"],
        meter_id=row["meter_id"],
        valid_from=utc(row["valid_from"]),
        valid_to=utc(row["valid_to"]),
    )


async def create(request: web.Request) -> web.Response:
    raw = await request.read()
    if nesting_exceeds(raw, 1):  # a flat object; msgspec would recurse into deeper JSON
        raise InvalidBodyError("invalid link: expected a flat JSON object, not nested JSON")
    try:
        body = _NEW_LINK.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidBodyError(f"invalid link: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBodyError(f"malformed JSON: {exc}") from None
    vehicle = params.device_id(body.vehicle_id, "vehicleId")
    meter = params.device_id(body.meter_id, "meterId")
    now = datetime.now(UTC)
    since = now if body.since is None else params.timestamp(body.since, "since")
    if since > now:
        raise InvalidParameterError("a link cannot take effect in the future", "since")
    pool = request.app[POOL]
    created = await queries.link(pool, vehicle, meter, since)
    [current, *_] = await queries.vehicle_links(pool, vehicle)
    return json(_link_body(current), status=201 if created else 200)


async def current(request: web.Request) -> web.Response:
    query = request.query
    limit = params.integer(query, "limit", 100, 1, 1000)
    after = params.decode_device_cursor(query)  # the vehicle of the previous page's last link
    rows = await queries.current_links(read_pool(request), after, limit + 1)
    page = rows[:limit]
    cursor = params.encode_cursor(page[-1]["vehicle_id"]) if len(rows) > limit else None
    return json(LinkList(links=[_link_body(row) for row in page], next_cursor=cursor))


async def of_vehicle(request: web.Request) -> web.Response:
    vehicle = params.device_id(request.match_info["vehicleId"], "vehicleId")
    pool = read_pool(request)
    if not await queries.vehicle_exists(pool, vehicle):
        raise NotFoundError(f"unknown vehicle {vehicle!r}", "vehicleId")
    rows = await queries.vehicle_links(pool, vehicle)
    links = [_link_body(row) for row in rows]
    now_link = links[0] if links and links[0].valid_to is None else None
    return json(VehicleLinks(vehicle_id=vehicle, current=now_link, history=links))


async def end(request: web.Request) -> web.Response:
    vehicle = params.device_id(request.match_info["vehicleId"], "vehicleId")
    pool = request.app[POOL]
    if not await queries.vehicle_exists(pool, vehicle):
        raise NotFoundError(f"unknown vehicle {vehicle!r}", "vehicleId")
    if not await queries.end_link(pool, vehicle, datetime.now(UTC)):
        raise NotFoundError(f"vehicle {vehicle!r} has no current link", "vehicleId")
    [ended, *_] = await queries.vehicle_links(pool, vehicle)
    return json(_link_body(ended))
