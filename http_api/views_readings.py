"""A device's raw readings over a window, oldest first: JSON page by page, or CSV for export,
streamed in chunks (memory and database connections held stay small however long the window)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from http_api import params
from http_api.bodies import Window
from http_api.errors import InvalidParameterError, NotFoundError
from http_api.history_bodies import (
    MeterReadings,
    StoredMeterReading,
    StoredVehicleReading,
    VehicleReadings,
)
from http_api.history_queries import (
    BEFORE_ANY,
    DeviceKind,
    ReadingPage,
    Row,
    device_key,
    page_end,
    readings,
)
from http_api.keys import SETTINGS
from http_api.read_pools import read_pool
from http_api.render import iso, json, kwh, tenth, utc

logger = logging.getLogger(__name__)

JSON_LIMIT: Final = 1000  # readings in a JSON page at most (default 100)
CSV_LIMIT: Final = 100_000  # rows in one CSV answer at most (and by default)
_CSV_CHUNK: Final = 2000  # rows read from the database, then written, at a time
CSV_TYPE: Final = "text/csv"


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one device kind's readings are read and written out."""

    name: DeviceKind
    parameter: str  # its id in the path
    header: Sequence[str]  # the CSV's, the JSON fields' names
    values: Callable[[Row], tuple[Any, ...]]  # a row's, rounded as the JSON's
    body: Callable[[str, Window, list[Row], str | None], Any]


def _meter_values(row: Row) -> tuple[Any, ...]:
    return (utc(row["ts"]), kwh(row["consumed_ac_mwh"]), tenth(row["voltage"]))


def _vehicle_values(row: Row) -> tuple[Any, ...]:
    return (
        utc(row["ts"]),
        tenth(row["soc"]),
        kwh(row["delivered_dc_mwh"]),
        tenth(row["battery_temp"]),
    )


def _meter_body(name: str, window: Window, rows: list[Row], cursor: str | None) -> Any:
    found = [StoredMeterReading(*_meter_values(row)) for row in rows]
    return MeterReadings(meter_id=name, window=window, readings=found, next_cursor=cursor)


def _vehicle_body(name: str, window: Window, rows: list[Row], cursor: str | None) -> Any:
    found = [StoredVehicleReading(*_vehicle_values(row)) for row in rows]
    return VehicleReadings(vehicle_id=name, window=window, readings=found, next_cursor=cursor)


_METER: Final = _Kind(
    "meter", "meterId", ("takenAt", "consumedAc", "voltage"), _meter_values, _meter_body
)
_VEHICLE: Final = _Kind(
    "vehicle",
    "vehicleId",
    ("takenAt", "soc", "deliveredDc", "batteryTemp"),
    _vehicle_values,
    _vehicle_body,
)


def wants_csv(request: web.Request) -> bool:
    """``?format=csv``, or (without ``format``) an Accept header that names text/csv and not
    application/json."""
    chosen = params.one_of(request.query, "format", ("json", "csv"))
    if chosen is not None:
        return chosen == "csv"
    accepted = {
        part.split(";")[0].strip().lower() for part in request.headers.get("Accept", "").split(",")
    }
    return CSV_TYPE in accepted and "application/json" not in accepted


def _cursor(query: Mapping[str, str]) -> datetime:
    """The time of the previous page's last reading."""
    key = params.decode_cursor(query)
    if key is None:
        return BEFORE_ANY
    try:
        return params.timestamp(key, "cursor")
    except InvalidParameterError:
        raise InvalidParameterError("not a cursor this API returned", "cursor") from None


async def meter_readings(request: web.Request) -> web.StreamResponse:
    return await _readings(request, _METER)


async def vehicle_readings(request: web.Request) -> web.StreamResponse:
    return await _readings(request, _VEHICLE)


async def _readings(request: web.Request, kind: _Kind) -> web.StreamResponse:
    query = request.query
    as_csv = wants_csv(request)
    max_days = request.app[SETTINGS].max_window_days
    start, end = params.window(query, datetime.now(UTC), timedelta(days=max_days))
    after = _cursor(query)
    most = CSV_LIMIT if as_csv else JSON_LIMIT
    limit = params.integer(query, "limit", CSV_LIMIT if as_csv else 100, 1, most)
    name = params.device_id(request.match_info[kind.parameter], kind.parameter)
    pool = read_pool(request)
    device = await device_key(pool, kind.name, name)
    if device is None:
        raise NotFoundError(f"unknown {kind.name} {name!r}", kind.parameter)
    page = ReadingPage(kind.name, device, start, end, after)
    if as_csv:
        return await _stream_csv(request, kind, name, page, limit)
    rows = await readings(pool, page, limit + 1)  # one more: is there a next page
    shown = rows[:limit]
    cursor = params.encode_cursor(iso(shown[-1]["ts"]) or "") if len(rows) > limit else None
    window = Window(from_=utc(start), to=utc(end))
    return json(kind.body(name, window, shown, cursor))


async def _stream_csv(
    request: web.Request, kind: _Kind, name: str, page: ReadingPage, limit: int
) -> web.StreamResponse:
    """The page as CSV with a header row, written a chunk at a time. A page cut at ``limit``
    says where the next begins in a Link header (rel="next"), known before the first row."""
    pool = read_pool(request)
    last = await page_end(pool, page, limit)
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{CSV_TYPE}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{kind.name}-{name}-readings.csv"',
        }
    )
    if last is not None:
        page = ReadingPage(page.kind, page.device, page.start, page.end, page.after, until=last)
        following = request.rel_url.update_query(cursor=params.encode_cursor(iso(last) or ""))
        response.headers["Link"] = f'<{following}>; rel="next"'
    await response.prepare(request)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    writer.writerow(kind.header)
    written = 0
    try:
        while True:
            rows = await readings(pool, page, _CSV_CHUNK)
            writer.writerows([iso(values[0]), *values[1:]] for values in map(kind.values, rows))
            await response.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
            written += len(rows)
            if len(rows) < _CSV_CHUNK:
                break
            page = ReadingPage(
                page.kind, page.device, page.start, page.end, rows[-1]["ts"], page.until
            )
    except (psycopg.Error, PoolTimeout) as exc:
        # The status and headers are sent: a short CSV would pass for a whole one. The
        # connection is dropped instead, so the client sees the answer incomplete.
        logger.warning(
            "CSV of %s %r cut after %d rows (%s): %s", kind.name, name, written, request.url, exc
        )
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
