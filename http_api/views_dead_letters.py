"""Dead letters for operators: what could not be stored, newest first, filtered by device,
reason and time, page by page. A payload is shown safely, never as raw bytes: its first KiB in
base64 and a short escaped preview, whatever its size or content."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

import msgspec
from aiohttp import web

from http_api import params
from http_api.bodies import Window
from http_api.errors import InvalidParameterError
from http_api.history_bodies import DeadLetter, DeadLetterList, DeadLettersCounted
from http_api.history_queries import DeadLetterFilter, Row, dead_letter_page
from http_api.keys import SETTINGS
from http_api.read_pools import read_pool
from http_api.render import iso, json, utc

DEVICE_KINDS: Final = ("meter", "vehicle")
REASON_MAX: Final = 200  # characters of a reason filter
_PREVIEW_CHARACTERS: Final = 160
_Key = tuple[datetime, Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]]
_KEY_DECODER: Final = msgspec.json.Decoder(_Key)


def preview(payload: bytes) -> str:
    """The first characters of a payload as text: invalid UTF-8 as \\xNN, and every character
    that is not printable (controls, line breaks) as \\xNN, \\uNNNN or \\UNNNNNNNN."""
    text = payload.decode("utf-8", errors="backslashreplace")[:_PREVIEW_CHARACTERS]
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def _dead_letter_body(row: Row) -> DeadLetter:
    head: bytes = row["payload_head"]
    return DeadLetter(
        dead_letter_id=str(row["dead_letter_id"]),
        received_at=utc(row["received_at"]),
        topic=row["topic"],
        device_kind=row["device_kind"],
        device_id=row["device_name"],
        reason=row["reason"],
        payload_bytes=row["payload_bytes"],
        payload_base64=base64.b64encode(head).decode(),
        payload_preview=preview(head),
        payload_truncated=len(head) < row["payload_bytes"],
    )


def _reason(query: Mapping[str, str]) -> str | None:
    text = query.get("reason")
    if text is None:
        return None
    if not 1 <= len(text) <= REASON_MAX or not text.isprintable():
        raise InvalidParameterError(
            f"a reason filter is 1 to {REASON_MAX} printable characters", "reason"
        )
    return text


def _decode_key(query: Mapping[str, str]) -> tuple[datetime, int] | None:
    key = params.decode_json_cursor(query, _KEY_DECODER)
    if key is not None and key[0].tzinfo is None:
        raise InvalidParameterError("not a cursor this API returned", "cursor")
    return key


async def dead_letters(request: web.Request) -> web.Response:
    query = request.query
    max_days = request.app[SETTINGS].max_window_days
    start, end = params.window(query, datetime.now(UTC), timedelta(days=max_days))
    kind = params.one_of(query, "deviceKind", DEVICE_KINDS)
    device = query.get("deviceId")
    limit = params.integer(query, "limit", 100, 1, 1000)
    found = DeadLetterFilter(
        start=start,
        end=end,
        device_kind="meter" if kind == "meter" else "vehicle" if kind == "vehicle" else None,
        device_name=None if device is None else params.device_id(device, "deviceId"),
        reason=_reason(query),
        after=_decode_key(query),
    )
    rows, counted = await dead_letter_page(read_pool(request), found, limit + 1)
    page = rows[:limit]
    cursor = None
    if len(rows) > limit:
        last = page[-1]
        key = msgspec.json.encode([iso(last["received_at"]), last["dead_letter_id"]]).decode()
        cursor = params.encode_cursor(key)
    return json(
        DeadLetterList(
            window=Window(from_=utc(start), to=utc(end)),
            dead_letters=[_dead_letter_body(row) for row in page],
            counted=DeadLettersCounted(
                dead_letters=counted["dead_letters"], minutes=counted["minutes"]
            ),
            next_cursor=cursor,
        )
    )
