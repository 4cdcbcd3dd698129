"""The API's SQL for alert history: one page of alerts, newest first, by keyset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

Row = dict[str, Any]

_SELECT: Final = """
SELECT alert_id, device_kind, device_name, rule, raised_at, cleared_at, value, threshold,
       clear_value, message
FROM alert
"""
_ORDER: Final = "ORDER BY raised_at DESC, alert_id DESC LIMIT %(limit)s"


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """What a page may hold; None is no restriction."""

    active: bool | None = None
    device_name: str | None = None
    rule: str | None = None
    raised_from: datetime | None = None  # inclusive
    raised_to: datetime | None = None  # exclusive
    after: tuple[datetime, int] | None = None  # (raised_at, alert_id) of the previous page's end


def _where(found: AlertFilter) -> str:
    # Only the conditions that apply are sent, each a constant fragment with its parameters, not
    # "(%(x)s IS NULL OR column = %(x)s)": psycopg prepares a statement after a few runs, and a
    # generic plan of that form can use neither alert_device_idx nor the partial index of active
    # alerts (alert_one_active_idx), which keeps state=active cheap however long the history.
    conditions = []
    if found.active is True:
        conditions.append("cleared_at IS NULL")
    elif found.active is False:
        conditions.append("cleared_at IS NOT NULL")
    if found.device_name is not None:
        conditions.append("device_name = %(device_name)s")
    if found.rule is not None:
        conditions.append("rule = %(rule)s")
    if found.raised_from is not None:
        conditions.append("raised_at >= %(raised_from)s")
    if found.raised_to is not None:
        conditions.append("raised_at < %(raised_to)s")
    if found.after is not None:
        conditions.append("(raised_at, alert_id) < (%(after_at)s, %(after_id)s)")
    return "WHERE " + " AND ".join(conditions) if conditions else ""


async def alert_page(pool: AsyncConnectionPool, found: AlertFilter, limit: int) -> list[Row]:
    params: dict[str, Any] = {
        "device_name": found.device_name,
        "rule": found.rule,
        "raised_from": found.raised_from,
        "raised_to": found.raised_to,
        "after_at": found.after[0] if found.after else None,
        "after_id": found.after[1] if found.after else None,
        "limit": limit,
    }
    sql = f"{_SELECT} {_where(found)} {_ORDER}"
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.encode(), params)
        return await cur.fetchall()
