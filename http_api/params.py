"""Parsing what a client sends in a path or query string; each problem names its parameter."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import msgspec

from gateway.readings import DEVICE_ID_PATTERN, DEVICE_ID_RULE, nesting_exceeds
from http_api.errors import InvalidParameterError

T = TypeVar("T")

_DEVICE_ID: Final = re.compile(DEVICE_ID_PATTERN)
_NOT_A_CURSOR: Final = "not a cursor this API returned"
# Times the database can hold and a dashboard can mean; a wider range only produces errors.
_EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)


def device_id(value: str, parameter: str) -> str:
    if not _DEVICE_ID.fullmatch(value):  # the whole string: "EV-1\n" is not an id
        raise InvalidParameterError(
            f"{value[:80]!r} is not a device id: {DEVICE_ID_RULE}", parameter
        )
    return value


def timestamp(value: str, parameter: str) -> datetime:
    """An RFC 3339 time with its offset (``Z`` or ``+hh:mm``), as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidParameterError(
            f"{value[:80]!r} is not an RFC 3339 time such as 2026-02-09T08:00:00Z", parameter
        ) from None
    if parsed.tzinfo is None:
        raise InvalidParameterError(f"{value[:80]!r} has no UTC offset: add Z or +hh:mm", parameter)
    parsed = parsed.astimezone(UTC)
    if not _EARLIEST <= parsed < _LATEST:
        raise InvalidParameterError(
            f"{value[:80]!r} is outside {_EARLIEST.year}-{_LATEST.year}", parameter
        )
    return parsed


def window(
    query: Mapping[str, str], now: datetime, max_length: timedelta
) -> tuple[datetime, datetime]:
    """``from``/``to`` of a query (default: the last 24 hours up to now). The end is clamped to
    now: a reading dated in the future is never counted."""
    end = timestamp(query["to"], "to") if "to" in query else now
    start = timestamp(query["from"], "from") if "from" in query else end - timedelta(hours=24)
    if start >= end:
        raise InvalidParameterError("from must be before to", "from")
    if end - start > max_length:
        raise InvalidParameterError(
            f"the window is longer than the maximum of {max_length.total_seconds() / 86400:g} days",
            "to",
        )
    if start >= now:
        raise InvalidParameterError("from must be in the past", "from")
    return start, min(end, now)


def bounds(query: Mapping[str, str]) -> tuple[datetime | None, datetime | None]:
    """Optional ``from`` (inclusive) and ``to`` (exclusive) of a query that lists history page by
    page: no default and no maximum length, since the page limit already bounds the work."""
    start = timestamp(query["from"], "from") if "from" in query else None
    end = timestamp(query["to"], "to") if "to" in query else None
    if start is not None and end is not None and start >= end:
        raise InvalidParameterError("from must be before to", "from")
    return start, end


def one_of(query: Mapping[str, str], parameter: str, allowed: Sequence[str]) -> str | None:
    text = query.get(parameter)
    if text is None:
        return None
    if text not in allowed:
        raise InvalidParameterError(f"{text[:80]!r} is not one of {', '.join(allowed)}", parameter)
    return text


def integer(query: Mapping[str, str], parameter: str, default: int, low: int, high: int) -> int:
    text = query.get(parameter)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidParameterError(f"{text[:80]!r} is not an integer", parameter) from None
    if not low <= value <= high:
        raise InvalidParameterError(f"must be from {low} to {high}", parameter)
    return value


def ratio(query: Mapping[str, str], parameter: str, default: float) -> float:
    text = query.get(parameter)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InvalidParameterError(f"{text[:80]!r} is not a number", parameter) from None
    if not 0 <= value <= 10:
        raise InvalidParameterError("must be a number from 0 to 10", parameter)
    return value


def boolean(query: Mapping[str, str], parameter: str) -> bool | None:
    text = query.get(parameter)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise InvalidParameterError(f"{text[:80]!r} is not true or false", parameter)
    return text == "true"


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(query: Mapping[str, str]) -> str | None:
    """The opaque keyset cursor of a previous page (the last key it held). What this API
    writes into a cursor is printable ASCII; anything else (a NUL byte, which PostgreSQL
    refuses in text) is a 400 naming the cursor."""
    text = query.get("cursor")
    if text is None:
        return None
    try:
        padded = text + "=" * (-len(text) % 4)
        key = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidParameterError(_NOT_A_CURSOR, "cursor") from None
    if not (key.isascii() and key.isprintable()):
        raise InvalidParameterError(f"{_NOT_A_CURSOR}: it holds control characters", "cursor")
    return key


def decode_device_cursor(query: Mapping[str, str]) -> str | None:
    """A cursor holding a device id (the name of a page's last device)."""
    key = decode_cursor(query)
    if key is not None and not _DEVICE_ID.fullmatch(key):
        raise InvalidParameterError(_NOT_A_CURSOR, "cursor")
    return key


def decode_json_cursor(query: Mapping[str, str], decoder: msgspec.json.Decoder[T]) -> T | None:
    """A cursor holding a flat JSON array (the sort key of a page's last row), decoded by
    ``decoder``; anything else is a 400 naming the cursor, however deep it nests."""
    key = decode_cursor(query)
    if key is None:
        return None
    if nesting_exceeds(key.encode(), 1):
        raise InvalidParameterError(f"{_NOT_A_CURSOR}: nested JSON", "cursor")
    try:
        return decoder.decode(key)
    except msgspec.DecodeError:
        raise InvalidParameterError(_NOT_A_CURSOR, "cursor") from None
