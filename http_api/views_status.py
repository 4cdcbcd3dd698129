"""Live status from the hot tables: one row per device, so every answer is O(1) per device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from http_api import params, queries
from http_api.errors import NotFoundError
from http_api.keys import POOL, SETTINGS
from http_api.render import iso, json, kw, kwh, tenth
from http_api.settings import Settings


def _online_since(settings: Settings) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=settings.online_silence_s)


def _vehicle_body(row: queries.Row) -> dict[str, Any]:
    return {
        "vehicleId": row["vehicle_id"],
        "online": row["online"],
        "charging": row["charging"],
        "batteryTempWarning": row["warning"],
        "takenAt": iso(row["ts"]),
        "receivedAt": iso(row["received_at"]),
        "firstSeenAt": iso(row["first_seen_at"]),
        "soc": tenth(row["soc"]),
        "deliveredDc": kwh(row["delivered_dc_mwh"]),
        "batteryTemp": tenth(row["battery_temp"]),
        "meterId": row["meter_id"],
    }


async def vehicle(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = params.device_id(request.match_info["vehicleId"], "vehicleId")
    row = await queries.vehicle_status(
        request.app[POOL], name, _online_since(settings), settings.battery_temp_warning_c
    )
    if row is None:
        raise NotFoundError(f"unknown vehicle {name!r}", "vehicleId")
    return json(_vehicle_body(row))


async def meter(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = params.device_id(request.match_info["meterId"], "meterId")
    row = await queries.meter_status(request.app[POOL], name, _online_since(settings))
    if row is None:
        raise NotFoundError(f"unknown meter {name!r}", "meterId")
    return json(
        {
            "meterId": row["meter_id"],
            "online": row["online"],
            "takenAt": iso(row["ts"]),
            "receivedAt": iso(row["received_at"]),
            "firstSeenAt": iso(row["first_seen_at"]),
            "consumedAc": kwh(row["consumed_ac_mwh"]),
            "voltage": tenth(row["voltage"]),
            "vehicleId": row["vehicle_id"],
        }
    )


async def overview(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    row = await queries.overview(
        request.app[POOL], _online_since(settings), settings.battery_temp_warning_c
    )
    # Power from the energy of each online meter's latest interval of READING_INTERVAL_S.
    power_kw = int(row["online_meters_latest_mwh"]) / 1e6 * 3600 / settings.reading_interval_s
    return json(
        {
            "meters": {"online": row["meters_online"], "offline": row["meters_offline"]},
            "vehicles": {
                "online": row["vehicles_online"],
                "offline": row["vehicles_offline"],
                "charging": row["vehicles_charging"],
                "batteryTempWarning": row["vehicles_warning"],
            },
            "fleetPowerKw": kw(power_kw),
            "onlineSilenceSeconds": settings.online_silence_s,
        }
    )


async def vehicles(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    query = request.query
    limit = params.integer(query, "limit", 100, 1, 1000)
    rows = await queries.vehicle_list(
        request.app[POOL],
        online_since=_online_since(settings),
        warning_c=settings.battery_temp_warning_c,
        charging=params.boolean(query, "charging"),
        warning=params.boolean(query, "warning"),
        after=params.decode_device_cursor(query),
        limit=limit + 1,  # one more tells whether there is a next page
    )
    page = rows[:limit]
    cursor = params.encode_cursor(page[-1]["vehicle_id"]) if len(rows) > limit else None
    return json({"vehicles": [_vehicle_body(row) for row in page], "nextCursor": cursor})
