"""Live status from the hot tables: one row per device, so every answer is O(1) per device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from http_api import params, queries
from http_api.bodies import (
    MeterCounts,
    MeterList,
    MeterStatus,
    Overview,
    VehicleCounts,
    VehicleList,
    VehicleStatus,
)
from http_api.errors import NotFoundError
from http_api.keys import SETTINGS
from http_api.read_pools import read_pool
from http_api.render import json, kw, kwh, tenth, utc
from http_api.settings import Settings


def _online_since(settings: Settings) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=settings.online_silence_s)


def _vehicle_body(row: queries.Row) -> VehicleStatus:
    return VehicleStatus(
        vehicle_id=row["vehicle_id"],
        online=row["online"],
        charging=row["charging"],
        battery_temp_warning=row["warning"],
        taken_at=utc(row["ts"]),
        received_at=utc(row["received_at"]),
        first_seen_at=utc(row["first_seen_at"]),
        soc=tenth(row["soc"]),
        delivered_dc=kwh(row["delivered_dc_mwh"]),
        battery_temp=tenth(row["battery_temp"]),
        meter_id=row["meter_id"],
    )


async def vehicle(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = params.device_id(request.match_info["vehicleId"], "vehicleId")
    row = await queries.vehicle_status(
        read_pool(request), name, _online_since(settings), settings.battery_temp_warning_c
    )
    if row is None:
        raise NotFoundError(f"unknown vehicle {name!r}", "vehicleId")
    return json(_vehicle_body(row))


def _meter_body(row: queries.Row) -> MeterStatus:
    return MeterStatus(
        meter_id=row["meter_id"],
        online=row["online"],
        taken_at=utc(row["ts"]),
        received_at=utc(row["received_at"]),
        first_seen_at=utc(row["first_seen_at"]),
        consumed_ac=kwh(row["consumed_ac_mwh"]),
        voltage=tenth(row["voltage"]),
        vehicle_id=row["vehicle_id"],
    )


async def meter(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = params.device_id(request.match_info["meterId"], "meterId")
    row = await queries.meter_status(read_pool(request), name, _online_since(settings))
    if row is None:
        raise NotFoundError(f"unknown meter {name!r}", "meterId")
    return json(_meter_body(row))


async def overview(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    row = await queries.overview(
        read_pool(request), _online_since(settings), settings.battery_temp_warning_c
    )
    # Power from the energy of each online meter's latest interval of READING_INTERVAL_S.
    power_kw = int(row["online_meters_latest_mwh"]) / 1e6 * 3600 / settings.reading_interval_s
    return json(
        Overview(
            meters=MeterCounts(online=row["meters_online"], offline=row["meters_offline"]),
            vehicles=VehicleCounts(
                online=row["vehicles_online"],
                offline=row["vehicles_offline"],
                charging=row["vehicles_charging"],
                battery_temp_warning=row["vehicles_warning"],
            ),
            fleet_power_kw=kw(power_kw),
            online_silence_seconds=settings.online_silence_s,
        )
    )


async def vehicles(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    query = request.query
    limit = params.integer(query, "limit", 100, 1, 1000)
    rows = await queries.vehicle_list(
        read_pool(request),
        online_since=_online_since(settings),
        warning_c=settings.battery_temp_warning_c,
        charging=params.boolean(query, "charging"),
        warning=params.boolean(query, "warning"),
        after=params.decode_device_cursor(query),
        limit=limit + 1,  # one more tells whether there is a next page
    )
    page = rows[:limit]
    cursor = params.encode_cursor(page[-1]["vehicle_id"]) if len(rows) > limit else None
    return json(VehicleList(vehicles=[_vehicle_body(row) for row in page], next_cursor=cursor))


async def meters(request: web.Request) -> web.Response:
    query = request.query
    limit = params.integer(query, "limit", 100, 1, 1000)
    rows = await queries.meter_list(
        read_pool(request),
        online_since=_online_since(request.app[SETTINGS]),
        online=params.boolean(query, "online"),
        linked=params.boolean(query, "linked"),
        after=params.decode_device_cursor(query),
        limit=limit + 1,  # one more tells whether there is a next page
    )
    page = rows[:limit]
    cursor = params.encode_cursor(page[-1]["meter_id"]) if len(rows) > limit else None
    return json(MeterList(meters=[_meter_body(row) for row in page], next_cursor=cursor))
