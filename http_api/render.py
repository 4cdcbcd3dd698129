"""How values leave the API: times as RFC 3339 UTC, and numbers rounded to what they can mean,
here and nowhere else: energy to 1 Wh (kWh with 3 decimals), power to 1 W (kW with 3),
temperatures, voltages and state of charge to 0.1, ratios (efficiency, coverage) to 4
decimals (an alert's value and threshold: in its rule's unit, gateway/alert_messages.py). A
sensor's float32 (30.875 read as 30.87499976158142) and the float noise of arithmetic
(51.12857999999999 kW) never reach a client."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, overload

import msgspec
from aiohttp import web

MWH_PER_KWH: Final = 1_000_000


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@overload
def utc(moment: datetime) -> datetime: ...
@overload
def utc(moment: None) -> None: ...
def utc(moment: datetime | None) -> datetime | None:
    """A time as UTC, which msgspec writes with a Z (the database's session may be in any)."""
    return None if moment is None else moment.astimezone(UTC)


@overload
def kwh(mwh: int) -> float: ...
@overload
def kwh(mwh: None) -> None: ...
def kwh(mwh: int | None) -> float | None:
    """Exact integer mWh as kWh to the watt-hour."""
    return None if mwh is None else round(mwh / 1_000) / 1_000  # mWh to Wh, Wh to kWh


def kw(value: float) -> float:
    return round(value, 3)


@overload
def tenth(value: float) -> float: ...
@overload
def tenth(value: None) -> None: ...
def tenth(value: float | None) -> float | None:
    """A temperature (°C), a voltage (V) or a state of charge (%)."""
    return None if value is None else round(value, 1)


@overload
def ratio(value: float) -> float: ...
@overload
def ratio(value: None) -> None: ...
def ratio(value: float | None) -> float | None:
    """An efficiency (DC/AC) or a coverage (0-1)."""
    return None if value is None else round(value, 4)


_ENCODER: Final = msgspec.json.Encoder()


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_ENCODER.encode(data), status=status, content_type="application/json")
