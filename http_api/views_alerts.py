"""Alerts for dashboards: raised and cleared alerts, newest first, page by page, in the words of
their MQTT messages; an engineer's acknowledgement."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Final

import msgspec
from aiohttp import web

from gateway.alert_messages import alert_message
from gateway.alert_rules import RULES
from gateway.readings import nesting_exceeds
from http_api import params
from http_api.alert_queries import AlertFilter, Row, acknowledge, alert_page
from http_api.auth import TOKEN_HASH
from http_api.bodies import AlertList
from http_api.errors import ConflictError, InvalidBodyError, InvalidParameterError, NotFoundError
from http_api.keys import POOL
from http_api.read_pools import read_pool
from http_api.render import iso, json

STATES: Final = ("raised", "cleared")
# In 0.1.0 an alert not yet cleared was 'active' here (and 'raised' on MQTT): still taken as
# raised in ?state=, deprecated (docs/CHANGELOG.md); answers say 'raised'.
DEPRECATED_STATES: Final = {"active": "raised"}
ALERT_ID_PATTERN: Final = "^[1-9][0-9]{0,18}$"  # a bigint identity
_ALERT_ID: Final = re.compile(ALERT_ID_PATTERN.strip("^$"))
_Key = tuple[datetime, Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]]
_KEY_DECODER: Final = msgspec.json.Decoder(_Key)


class AckNote(msgspec.Struct, forbid_unknown_fields=True):
    """The optional body of an acknowledgement: what the engineer found or did."""

    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


_ACK_NOTE: Final = msgspec.json.Decoder(AckNote)


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
    state = params.one_of(query, "state", (*STATES, *DEPRECATED_STATES))
    state = DEPRECATED_STATES.get(state, state) if state is not None else None
    device = query.get("deviceId")
    raised_from, raised_to = params.bounds(query)
    limit = params.integer(query, "limit", 100, 1, 1000)
    found = AlertFilter(
        raised=None if state is None else state == "raised",
        acknowledged=params.boolean(query, "acknowledged"),
        device_name=None if device is None else params.device_id(device, "deviceId"),
        rule=params.one_of(query, "rule", RULES),
        raised_from=raised_from,
        raised_to=raised_to,
        after=_decode_key(query),
    )
    rows = await alert_page(read_pool(request), found, limit + 1)  # one more: is there a next page
    page = rows[:limit]
    cursor = _encode_key(page[-1]) if len(rows) > limit else None
    return json(AlertList(alerts=[alert_message(row) for row in page], next_cursor=cursor))


def _note(raw: bytes) -> str | None:
    if not raw.strip():
        return None
    if nesting_exceeds(raw, 1):
        raise InvalidBodyError("invalid acknowledgement: expected a flat JSON object")
    try:
        return _ACK_NOTE.decode(raw).note
    except msgspec.ValidationError as exc:
        field = "note" if "$.note" in str(exc) else None
        raise InvalidBodyError(f"invalid acknowledgement: {exc}", field) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBodyError(f"malformed JSON: {exc}") from None


async def acknowledge_alert(request: web.Request) -> web.Response:
    """Acknowledge a raised alert, once: a second acknowledgement answers the first."""
    text = request.match_info["alertId"]
    if not _ALERT_ID.fullmatch(text) or int(text) >= 2**63:
        raise InvalidParameterError(f"{text[:80]!r} is not an alert id", "alertId")
    alert_id = int(text)
    note = _note(await request.read())
    done = await acknowledge(request.app[POOL], alert_id, request[TOKEN_HASH], note)
    if done.outcome == "unknown":
        raise NotFoundError(f"no alert {alert_id}", "alertId")
    assert done.alert is not None
    if done.outcome == "cleared":
        raise ConflictError(f"alert {alert_id} was cleared: there is nothing to acknowledge")
    return json(alert_message(done.alert))
