"""Charging efficiency of a vehicle, per hour, and across the fleet."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from http_api import params
from http_api.analytics import (
    Figures,
    figure_fields,
    hours_of,
    overlap_seconds,
    status_of,
    window_body,
)
from http_api.bodies import (
    Fleet,
    FleetTotals,
    FleetVehicle,
    MeterSegment,
    Performance,
    StatusCounts,
    Trend,
    TrendHour,
)
from http_api.errors import NotFoundError
from http_api.fleet_cache import FLEET_CACHE
from http_api.fleet_queries import AcSums, VehicleSums, fleet_sums
from http_api.keys import SETTINGS
from http_api.read_pools import read_pool
from http_api.render import json, kwh, ratio, utc
from http_api.rollup_queries import Grouping, Stream, vehicle_sums
from http_api.settings import Settings

Window = tuple[datetime, datetime]
_FLEET_CURSOR: Final = msgspec.json.Decoder(tuple[float, str])  # efficiency, vehicle name
_LIMIT: Final = 100  # vehicles in a page, unless ?limit=
_DAY: Final = timedelta(hours=24)


def _window(request: web.Request) -> Window:
    settings = request.app[SETTINGS]
    return params.window(request.query, datetime.now(UTC), timedelta(days=settings.max_window_days))


async def _vehicle_sums(
    request: web.Request, window: Window, statements: tuple[tuple[Stream, Grouping], ...]
) -> tuple[str, list[list[dict[str, Any]]]]:
    name = params.device_id(request.match_info["vehicleId"], "vehicleId")
    sums = await vehicle_sums(read_pool(request), name, window, statements)
    if sums is None:
        raise NotFoundError(f"unknown vehicle {name!r}", "vehicleId")
    return name, sums


# DC while linked is read for the link segments that do not cover the whole window; one that
# does (the usual case) adds the window's DC, which is read anyway (rollup_queries.Stream).
PERFORMANCE_SQL: Final[tuple[tuple[Stream, Grouping], ...]] = (
    ("dc_window", "total"),
    ("dc_linked_cut", "total"),
    ("ac_linked", "segment"),
)
TREND_SQL: Final[tuple[tuple[Stream, Grouping], ...]] = (
    ("dc_window", "hour"),
    ("dc_linked_cut", "hour"),
    ("ac_linked", "hour"),
    ("ac_linked", "segment"),
)


def _covers(segment: dict[str, Any], window: Window) -> bool:
    """The link segment (an ac_linked "segment" row) is the whole window."""
    return (segment["s"], segment["e"]) == window


async def performance(request: web.Request) -> web.Response:
    window = _window(request)  # parameters are checked before the database is asked
    name, [[dc], dc_linked, ac_linked] = await _vehicle_sums(request, window, PERFORMANCE_SQL)
    figures = Figures(seconds=(window[1] - window[0]).total_seconds())
    figures.set_dc(dc)
    for row in dc_linked:
        figures.add_dc_linked(row)
    meters = []
    for row in ac_linked:
        if _covers(row, window):
            figures.add_dc_linked(dc)
        figures.add_ac(row)
        figures.linked_seconds += (row["e"] - row["s"]).total_seconds()
        meters.append(
            MeterSegment(
                meter_id=row["device_name"],
                from_=utc(row["s"]),
                to=utc(row["e"]),
                total_ac=kwh(int(row["energy"])),
                readings=int(row["readings"]),
            )
        )
    return json(
        Performance(
            vehicle_id=name,
            window=window_body(*window),
            meters=meters,
            **figure_fields(figures, request.app[SETTINGS]),
        )
    )


async def trend(request: web.Request) -> web.Response:
    window = _window(request)  # parameters are checked before the database is asked
    name, [dc, dc_linked, ac_linked, segments] = await _vehicle_sums(request, window, TREND_SQL)
    hours = {
        hour: Figures(seconds=overlap_seconds((hour, hour + timedelta(hours=1)), window))
        for hour in hours_of(*window)
    }
    for row in dc:
        if row["hour"] in hours:
            hours[row["hour"]].set_dc(row)
    for row in dc_linked:
        if row["hour"] in hours:
            hours[row["hour"]].add_dc_linked(row)
    for row in ac_linked:
        if row["hour"] in hours:
            hours[row["hour"]].add_ac(row)
    for segment in segments:
        if _covers(segment, window):
            for row in dc:
                if row["hour"] in hours:
                    hours[row["hour"]].add_dc_linked(row)
        for hour, figures in hours.items():
            span = (hour, hour + timedelta(hours=1))
            figures.linked_seconds += overlap_seconds(span, (segment["s"], segment["e"]))
    settings = request.app[SETTINGS]
    return json(
        Trend(
            vehicle_id=name,
            window=window_body(*window),
            hours=[
                TrendHour(hour=utc(hour), **figure_fields(figures, settings))
                for hour, figures in sorted(hours.items())
            ],
        )
    )


class FleetPage:
    """One pass over every vehicle's fleet row: the fleet totals and the ranking; Figures only
    for the returned page, whose vehicle ids are what fleet_sums then asks temperatures for."""

    def __init__(self, window: Window, settings: Settings, below: float, limit: int) -> None:
        self.seconds = (window[1] - window[0]).total_seconds()
        self.settings, self.below, self.limit = settings, below, limit
        self.after: tuple[float, str] | None = None
        self.vehicles = self.total_ac = self.total_dc = self.matched_ac = self.matched_dc = 0
        self.statuses: defaultdict[str, int] = defaultdict(int)
        self.ranked: list[tuple[float, str, int, int, int, int, int]] = []
        self.page: dict[int, tuple[float, str, Figures]] = {}  # by vehicle_id, in rank order

    def pick(self, vehicles: list[VehicleSums], ac_sums: AcSums) -> list[int]:
        # This runs for every vehicle of the fleet: sums in locals, as Figures.efficiency inline.
        below, after, settings, statuses = self.below, self.after, self.settings, self.statuses
        ranked = self.ranked
        total_ac = total_dc = matched_ac = matched_dc = no_data = 0
        no_ac = ("", 0, 0)
        for vehicle_id, dc, dc_linked, dc_linked_readings in vehicles:
            name, ac, ac_readings = ac_sums.get(vehicle_id, no_ac)
            total_ac += ac
            total_dc += dc
            if ac <= 0 or not dc_linked_readings:
                no_data += 1
                continue
            efficiency = dc_linked / ac
            statuses[status_of(efficiency, settings)] += 1
            # Fleet efficiency pairs each vehicle's DC with its own meters' AC, never all DC
            # over all AC (AC of unlinked meters, DC of unlinked vehicles would skew it).
            matched_dc += dc_linked
            matched_ac += ac
            if efficiency < below and (after is None or (efficiency, name) > after):
                ranked.append(
                    (efficiency, name, vehicle_id, ac, ac_readings, dc_linked, dc_linked_readings)
                )
        if no_data:
            statuses["noData"] += no_data
        self.vehicles += len(vehicles)
        self.total_ac += total_ac
        self.total_dc += total_dc
        self.matched_ac += matched_ac
        self.matched_dc += matched_dc
        ranked.sort()  # by efficiency, then name (names are unique)
        for efficiency, name, vehicle_id, *sums in ranked[: self.limit]:
            ac, ac_readings, dc_linked, dc_linked_readings = sums
            figures = Figures(
                ac_mwh=ac,
                ac_readings=ac_readings,
                dc_linked_mwh=dc_linked,
                dc_linked_readings=dc_linked_readings,
                seconds=self.seconds,
            )
            self.page[vehicle_id] = (efficiency, name, figures)
        return list(self.page)

    def add_page(self, rows: list[dict[str, Any]]) -> None:
        """The page's DC with temperatures, and linked time (fleet_sums asks for them)."""
        for row in rows:
            _, _, figures = self.page[row["vehicle_id"]]
            figures.set_dc(row)
            figures.linked_seconds = row["linked_seconds"]


async def fleet_view(
    pool: AsyncConnectionPool,
    settings: Settings,
    window: Window,
    below: float,
    limit: int,
    *,
    after: tuple[float, str] | None = None,
) -> Fleet:
    """The fleet over ``window``: totals, and the page of vehicles below ``below`` after the
    cursor's ``after``."""
    computed_at = datetime.now(UTC)
    fleet = FleetPage(window, settings, below, limit)
    fleet.after = after
    page_rows = await fleet_sums(pool, window, fleet.pick)
    fleet.add_page(page_rows)
    page = list(fleet.page.values())
    cursor = None
    if len(fleet.ranked) > limit:
        cursor = params.encode_cursor(msgspec.json.encode([page[-1][0], page[-1][1]]).decode())
    return Fleet(
        window=window_body(*window),
        computed_at=computed_at,
        totals=FleetTotals(
            vehicles=fleet.vehicles,
            total_ac=kwh(fleet.total_ac),
            total_dc=kwh(fleet.total_dc),
            matched_ac=kwh(fleet.matched_ac),
            matched_dc=kwh(fleet.matched_dc),
            efficiency=ratio(fleet.matched_dc / fleet.matched_ac) if fleet.matched_ac else None,
            by_status=msgspec.convert(fleet.statuses, StatusCounts),
        ),
        below=below,
        vehicles=[
            FleetVehicle(vehicle_id=vehicle_name, **figure_fields(vehicle, settings))
            for _, vehicle_name, vehicle in page
        ],
        next_cursor=cursor,
    )


async def fleet(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    query = request.query
    window = _window(request)
    below = params.ratio(query, "below", settings.efficiency_good)
    limit = params.integer(query, "limit", _LIMIT, 1, 1000)
    after = params.decode_json_cursor(query, _FLEET_CURSOR)
    cache = request.app[FLEET_CACHE]
    default = not {"from", "to", "cursor"} & query.keys()
    if cache.period_s and default and (below, limit) == (settings.efficiency_good, _LIMIT):
        view = await cache.get(lambda: _default_view(read_pool(request), settings))
        return web.Response(
            body=view.body, content_type="application/json", headers=cache.headers(view)
        )
    return json(await fleet_view(read_pool(request), settings, window, below, limit, after=after))


async def _default_view(pool: AsyncConnectionPool, settings: Settings) -> bytes:
    """The fleet over the 24 hours up to now, below EFFICIENCY_GOOD, its first page, encoded:
    what most dashboards poll, and FleetViewCache serves."""
    now = datetime.now(UTC)
    view = await fleet_view(pool, settings, (now - _DAY, now), settings.efficiency_good, _LIMIT)
    return msgspec.json.encode(view)
