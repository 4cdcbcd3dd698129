"""The API's SQL for what arrived: a device's raw readings over a window, oldest first, and dead
letters, newest first, each page by keyset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

Row = dict[str, Any]
DeviceKind: TypeAlias = Literal["meter", "vehicle"]

# A reading "after" this is any reading: the keyset's start when no cursor was given.
BEFORE_ANY: Final = datetime(1, 1, 1, tzinfo=UTC)
_DEVICE: Final[dict[DeviceKind, str]] = {
    "meter": "SELECT meter_id AS id FROM meter WHERE name = %s",
    "vehicle": "SELECT vehicle_id AS id FROM vehicle WHERE name = %s",
}
# [start, end) of the window, after the cursor, up to `until` (inclusive: a page's last reading).
_IN_PAGE: Final[dict[DeviceKind, str]] = {
    kind: f"""
    FROM {kind}_reading r
    WHERE r.{kind}_id = %(device)s AND r.ts >= %(start)s AND r.ts < %(end)s
      AND r.ts > %(after)s AND r.ts <= %(until)s
    ORDER BY r.ts"""
    for kind in ("meter", "vehicle")
}
_READINGS: Final[dict[DeviceKind, str]] = {
    "meter": f"SELECT r.ts, r.consumed_ac_mwh, r.voltage {_IN_PAGE['meter']} LIMIT %(limit)s",
    "vehicle": f"""
    SELECT r.ts, r.soc, r.delivered_dc_mwh, r.battery_temp {_IN_PAGE["vehicle"]}
    LIMIT %(limit)s""",
}
# The time of the page's last reading, and of the next one if there is one.
_PAGE_END: Final[dict[DeviceKind, str]] = {
    kind: f"SELECT r.ts {_IN_PAGE[kind]} OFFSET %(skip)s LIMIT 2" for kind in ("meter", "vehicle")
}

_DEAD_LETTER_COLUMNS: Final = """
SELECT dead_letter_id, received_at, left(topic, 256) AS topic, device_kind, device_name, reason,
       payload_bytes, substring(payload FROM 1 FOR 1024) AS payload_head
FROM dead_letter
"""
_DEAD_LETTER_ORDER: Final = "ORDER BY received_at DESC, dead_letter_id DESC LIMIT %(limit)s"
_COUNTED: Final = """
SELECT coalesce(sum(dead_letters), 0)::bigint AS dead_letters, count(*) AS minutes
FROM dead_letter_overflow
"""


@dataclass(frozen=True, slots=True)
class ReadingPage:
    """Which readings of one device a page holds."""

    kind: DeviceKind
    device: int  # meter_id or vehicle_id
    start: datetime  # inclusive
    end: datetime  # exclusive
    after: datetime = BEFORE_ANY  # the previous page's last reading (exclusive)
    until: datetime | None = None  # this page's last reading (inclusive); None: up to end

    def params(self, **more: Any) -> dict[str, Any]:
        return {
            "device": self.device,
            "start": self.start,
            "end": self.end,
            "after": self.after,
            "until": self.until or self.end,
            **more,
        }


async def _all(pool: AsyncConnectionPool, sql: str, params: Any) -> list[Row]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.encode(), params)
        return await cur.fetchall()


async def device_key(pool: AsyncConnectionPool, kind: DeviceKind, name: str) -> int | None:
    rows = await _all(pool, _DEVICE[kind], (name,))
    return int(rows[0]["id"]) if rows else None


async def readings(pool: AsyncConnectionPool, page: ReadingPage, limit: int) -> list[Row]:
    return await _all(pool, _READINGS[page.kind], page.params(limit=limit))


async def page_end(pool: AsyncConnectionPool, page: ReadingPage, limit: int) -> datetime | None:
    """The time of the ``limit``-th reading of ``page`` if more follow it, else None (the
    page holds them all)."""
    rows = await _all(pool, _PAGE_END[page.kind], page.params(skip=limit - 1))
    return rows[0]["ts"] if len(rows) == 2 else None


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """What a page of dead letters may hold; None is no restriction."""

    start: datetime  # inclusive, on received_at
    end: datetime  # exclusive
    device_kind: DeviceKind | None = None
    device_name: str | None = None
    reason: str | None = None  # a part of the reason, any case
    after: tuple[datetime, int] | None = None  # (received_at, id) of the previous page's end

    def params(self, limit: int) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "device_kind": self.device_kind,
            "device_name": self.device_name,
            "reason": None if self.reason is None else f"%{_like_escaped(self.reason)}%",
            "after_at": self.after[0] if self.after else None,
            "after_id": self.after[1] if self.after else None,
            "limit": limit,
        }


def _like_escaped(text: str) -> str:
    """``text`` matched literally by LIKE (whose escape character is a backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(found: DeadLetterFilter, *, counted: bool) -> str:
    # Constant fragments for the filters given (as in alert_queries.py): a generic plan of
    # "(%(x)s IS NULL OR ...)" could not use dead_letter_device_idx.
    if counted:  # a row counts the dead letters of one device and minute
        conditions = ["last_received_at >= %(start)s", "window_start < %(end)s"]
    else:
        conditions = ["received_at >= %(start)s", "received_at < %(end)s"]
    if found.device_kind is not None:
        conditions.append("device_kind = %(device_kind)s")
    if found.device_name is not None:
        conditions.append("device_name = %(device_name)s")
    if not counted and found.reason is not None:
        conditions.append("reason ILIKE %(reason)s")
    if not counted and found.after is not None:
        conditions.append("(received_at, dead_letter_id) < (%(after_at)s, %(after_id)s)")
    return "WHERE " + " AND ".join(conditions)


async def dead_letter_page(
    pool: AsyncConnectionPool, found: DeadLetterFilter, limit: int
) -> tuple[list[Row], Row]:
    """A page of dead letters, newest first, and those only counted past the cap."""
    params = found.params(limit)
    page = f"{_DEAD_LETTER_COLUMNS} {_where(found, counted=False)} {_DEAD_LETTER_ORDER}"
    counted = f"{_COUNTED} {_where(found, counted=True)}"
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(page.encode(), params)
        rows = await cur.fetchall()
        await cur.execute(counted.encode(), params)
        totals = await cur.fetchone()
    assert totals is not None  # an aggregate always returns its row
    return rows, totals
