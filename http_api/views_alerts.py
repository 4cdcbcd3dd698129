"""Alert history for dashboards: active and cleared alerts, newest first, page by page."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec
from aiohttp import web

from gateway.alert_rules import RULES, describe
from http_api import params
from http_api.alert_queries import AlertFilter, Row, alert_page
from http_api.bodies import Alert, AlertList
from http_api.errors import InvalidParameterError
from http_api.keys import POOL
from http_api.render import alert_number, iso, json, utc

STATES: Final = ("active", "cleared")
_Key = tuple[datetime, Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]]
_KEY_DECODER: Final = msgspec.json.Decoder(_Key)


def _alert_body(row: Row) -> Alert:
    state: Literal["active", "cleared"] = "active" if row["cleared_at"] is None else "cleared"
    message = row["message"]
    # The sentence of the MQTT alert events, with the worst value so far; the stored message
    # (written at the raise) only for a rule this version no longer knows.
    if row["rule"] in RULES:
        event = "raised" if state == "active" else "cleared"
        message = describe(
            row["rule"],
            event,
            row["device_name"],
            row["value"],
            row["threshold"],
            clear_value=row["clear_value"],
        )
    rule = row["rule"]
    return Alert(
        alert_id=str(row["alert_id"]),
        rule=rule,
        state=state,
        device_id=row["device_name"],
        device_kind=row["device_kind"],
        value=alert_number(rule, row["value"]),
        threshold=alert_number(rule, row["threshold"]),
        clear_value=alert_number(rule, row["clear_value"]),
        raised_at=utc(row["raised_at"]),
        cleared_at=utc(row["cleared_at"]),
        message=message,
    )


def _encode_key(row: Row) -> str:
    return params.encode_cursor(
        msgspec.json.encode([iso(row["raised_at"]), row["alert_id"]]).decode()
    )


def _decode_key(query: Mapping[str, str]) -> tuple[datetime, int] | None:
    key = params.decode_json_cursor(query, _KEY_DECODER)
    if key is None:
        return None
    raised_at, alert_id = key
    if raised_at.tzinfo is None:
        raise InvalidParameterError("not a cursor this API returned", "cursor")
    return raised_at, alert_id


async def alerts(request: web.Request) -> web.Response:
    query = request.query
    state = params.one_of(query, "state", STATES)
    device = query.get("deviceId")
    raised_from, raised_to = params.bounds(query)
    limit = params.integer(query, "limit", 100, 1, 1000)
    found = AlertFilter(
        active=None if state is None else state == "active",
        device_name=None if device is None else params.device_id(device, "deviceId"),
        rule=params.one_of(query, "rule", RULES),
        raised_from=raised_from,
        raised_to=raised_to,
        after=_decode_key(query),
    )
    rows = await alert_page(request.app[POOL], found, limit + 1)  # one more: is there a next page
    page = rows[:limit]
    cursor = _encode_key(page[-1]) if len(rows) > limit else None
    return json(AlertList(alerts=[_alert_body(row) for row in page], next_cursor=cursor))
