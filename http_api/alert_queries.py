"""The API's SQL for alerts: one page of alerts, newest first, by keyset; an acknowledgement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.alert_messages import ALERT_EVENTS_CHANNEL, acknowledger

Row = dict[str, Any]

_COLUMNS: Final = """
alert_id, device_kind, device_name, rule, raised_at, cleared_at, value, threshold, clear_value,
acknowledged_at, acknowledged_by, acknowledged_note, message
"""
_SELECT: Final = f"SELECT {_COLUMNS} FROM alert"
_ORDER: Final = "ORDER BY raised_at DESC, alert_id DESC LIMIT %(limit)s"
# The alert, locked: an acknowledgement and the gateway's clear take turns.
_LOCK_ALERT: Final = f"{_SELECT} WHERE alert_id = %s FOR UPDATE"
_TOKEN: Final = "SELECT token_id, name FROM api_token WHERE token_hash = %s"
_ACKNOWLEDGE: Final = f"""
WITH acknowledged AS (
    UPDATE alert SET acknowledged_at = now(), acknowledged_by = %(by)s,
                     acknowledged_token_id = %(token_id)s, acknowledged_note = %(note)s
    WHERE alert_id = %(alert_id)s
    RETURNING {_COLUMNS}
), event AS (
    INSERT INTO alert_event (alert_id, state) SELECT alert_id, 'acknowledged' FROM acknowledged
)
SELECT * FROM acknowledged
"""
_NOTIFY: Final = f"NOTIFY {ALERT_EVENTS_CHANNEL}"  # sent at commit: the gateway publishes it


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """What a page may hold; None is no restriction."""

    raised: bool | None = None  # True: raised now (not cleared); False: cleared
    acknowledged: bool | None = None
    device_name: str | None = None
    rule: str | None = None
    raised_from: datetime | None = None  # inclusive
    raised_to: datetime | None = None  # exclusive
    after: tuple[datetime, int] | None = None  # (raised_at, alert_id) of the previous page's end


def _where(found: AlertFilter) -> str:
    # Only the conditions that apply are sent, each a constant fragment with its parameters, not
    # "(%(x)s IS NULL OR column = %(x)s)": psycopg prepares a statement after a few runs, and a
    # generic plan of that form can use neither alert_device_idx nor the partial index of active
    # alerts (alert_one_active_idx), which keeps state=raised cheap however long the history.
    conditions = []
    if found.raised is True:
        conditions.append("cleared_at IS NULL")
    elif found.raised is False:
        conditions.append("cleared_at IS NOT NULL")
    if found.acknowledged is True:
        conditions.append("acknowledged_at IS NOT NULL")
    elif found.acknowledged is False:
        conditions.append("acknowledged_at IS NULL")
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


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """What acknowledging found: the alert as it is now, and whether this request did it."""

    outcome: Literal["acknowledged", "already", "cleared", "unknown"]
    alert: Row | None = None


async def acknowledge(
    pool: AsyncConnectionPool, alert_id: int, token_hash: bytes, note: str | None
) -> Acknowledgement:
    """Acknowledge an alert that is raised, for the token of ``token_hash``: once (a second
    acknowledgement finds the first), never a cleared one. Its event and a notification for
    the gateway's publisher are written in the same transaction."""
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_LOCK_ALERT.encode(), (alert_id,))
        alert = await cur.fetchone()
        if alert is None:
            return Acknowledgement("unknown")
        if alert["acknowledged_at"] is not None:
            return Acknowledgement("already", alert)
        if alert["cleared_at"] is not None:
            return Acknowledgement("cleared", alert)
        await cur.execute(_TOKEN.encode(), (token_hash,))
        token = await cur.fetchone()  # found valid a moment ago; deleted since, by SQL: None
        params = {
            "alert_id": alert_id,
            "by": "a deleted token" if token is None else acknowledger(**token),
            "token_id": None if token is None else token["token_id"],
            "note": note,
        }
        await cur.execute(_ACKNOWLEDGE.encode(), params)
        acknowledged = await cur.fetchone()
        await cur.execute(_NOTIFY.encode())
        return Acknowledgement("acknowledged", acknowledged)
