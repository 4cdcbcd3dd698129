"""How values leave the API: times as RFC 3339 UTC, energy in kWh, JSON numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

MWH_PER_KWH = 1_000_000


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def kwh(mwh: int | None) -> float | None:
    return None if mwh is None else mwh / MWH_PER_KWH


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )
