"""The API's SQL for live status, links, tokens and health (analytics SQL: rollup_queries.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from http_api.errors import ConflictError, NotFoundError

Row = dict[str, Any]

# Predicates shared by the overview's counts and the list behind them, so they always agree.
# %(online_since)s: readings taken after it are recent enough to call the device online.
_ONLINE: Final = "coalesce(v.ts > %(online_since)s, false)"
_CHARGING: Final = "coalesce(v.ts > %(online_since)s AND v.delivered_dc_mwh > 0, false)"
_WARNING: Final = "coalesce(v.battery_temp >= %(warning_c)s, false)"

_VEHICLE_COLUMNS: Final = f"""
    v.name AS vehicle_id, v.first_seen_at, v.ts, v.received_at, v.soc, v.delivered_dc_mwh,
    v.battery_temp, {_ONLINE} AS online, {_CHARGING} AS charging, {_WARNING} AS warning,
    (SELECT m.name FROM vehicle_link l JOIN meter m USING (meter_id)
     WHERE l.vehicle_id = v.vehicle_id AND l.valid_to IS NULL) AS meter_id
"""
_VEHICLE_STATUS: Final = f"SELECT {_VEHICLE_COLUMNS} FROM vehicle v WHERE v.name = %(name)s"
_METER_COLUMNS: Final = f"""
    v.name AS meter_id, v.first_seen_at, v.ts, v.received_at, v.consumed_ac_mwh, v.voltage,
    {_ONLINE} AS online,
    (SELECT x.name FROM vehicle_link l JOIN vehicle x USING (vehicle_id)
     WHERE l.meter_id = v.meter_id AND l.valid_to IS NULL) AS vehicle_id
"""
_METER_STATUS: Final = f"SELECT {_METER_COLUMNS} FROM meter v WHERE v.name = %(name)s"
_LINKED: Final = """
    EXISTS (SELECT FROM vehicle_link l WHERE l.meter_id = v.meter_id AND l.valid_to IS NULL)
"""
_METER_LIST: Final = f"""
SELECT {_METER_COLUMNS} FROM meter v
WHERE (%(after)s::text IS NULL OR v.name > %(after)s)
  AND (%(online)s::bool IS NULL OR {_ONLINE} = %(online)s)
  AND (%(linked)s::bool IS NULL OR {_LINKED} = %(linked)s)
ORDER BY v.name
LIMIT %(limit)s
"""
_VEHICLE_LIST: Final = f"""
SELECT {_VEHICLE_COLUMNS} FROM vehicle v
WHERE (%(after)s::text IS NULL OR v.name > %(after)s)
  AND (%(charging)s::bool IS NULL OR {_CHARGING} = %(charging)s)
  AND (%(warning)s::bool IS NULL OR {_WARNING} = %(warning)s)
ORDER BY v.name
LIMIT %(limit)s
"""
_OVERVIEW: Final = f"""
SELECT
    (SELECT count(*) FILTER (WHERE {_ONLINE}) FROM meter v) AS meters_online,
    (SELECT count(*) FILTER (WHERE NOT {_ONLINE}) FROM meter v) AS meters_offline,
    (SELECT coalesce(sum(v.consumed_ac_mwh) FILTER (WHERE {_ONLINE}), 0) FROM meter v)
        AS online_meters_latest_mwh,
    (SELECT count(*) FILTER (WHERE {_ONLINE}) FROM vehicle v) AS vehicles_online,
    (SELECT count(*) FILTER (WHERE NOT {_ONLINE}) FROM vehicle v) AS vehicles_offline,
    (SELECT count(*) FILTER (WHERE {_CHARGING}) FROM vehicle v) AS vehicles_charging,
    (SELECT count(*) FILTER (WHERE {_WARNING}) FROM vehicle v) AS vehicles_warning
"""
_GATEWAY_LATEST: Final = """
SELECT greatest((SELECT max(received_at) FROM meter), (SELECT max(received_at) FROM vehicle))
"""
_FIND_TOKEN: Final = "SELECT scope FROM api_token WHERE token_hash = %s AND revoked_at IS NULL"

_LINK_COLUMNS: Final = """
    v.name AS vehicle_id, m.name AS meter_id, l.valid_from, l.valid_to
FROM vehicle_link l JOIN vehicle v USING (vehicle_id) JOIN meter m USING (meter_id)
"""
_CURRENT_LINKS: Final = f"""
SELECT {_LINK_COLUMNS}
WHERE l.valid_to IS NULL AND (%(after)s::text IS NULL OR v.name > %(after)s)
ORDER BY v.name
LIMIT %(limit)s
"""
_VEHICLE_LINKS: Final = f"SELECT {_LINK_COLUMNS} WHERE v.name = %s ORDER BY l.valid_from DESC"
# Link changes are rare: one transaction-scoped advisory lock serialises them all. Row locks on
# meter/vehicle would instead queue behind (and deadlock with) the gateway's live-row updates.
_LOCK_LINKS: Final = "SELECT pg_advisory_xact_lock(7236828797547245931)"
_VEHICLE_ID: Final = "SELECT vehicle_id FROM vehicle WHERE name = %s"
_METER_ID: Final = "SELECT meter_id FROM meter WHERE name = %s"
_LATEST_LINK: Final = """
SELECT link_id, meter_id, valid_from, valid_to FROM vehicle_link
WHERE vehicle_id = %s ORDER BY valid_from DESC LIMIT 1
"""
_METER_TAKEN: Final = """
SELECT v.name, l.valid_from, l.valid_to FROM vehicle_link l JOIN vehicle v USING (vehicle_id)
WHERE l.meter_id = %(meter)s AND l.vehicle_id <> %(vehicle)s
  AND (l.valid_to IS NULL OR l.valid_to > %(since)s)
LIMIT 1
"""
_END_LINK: Final = "UPDATE vehicle_link SET valid_to = %s WHERE link_id = %s"
_INSERT_LINK: Final = """
INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from) VALUES (%s, %s, %s)
"""
_END_CURRENT_LINK: Final = """
UPDATE vehicle_link l SET valid_to = greatest(%(at)s, l.valid_from + interval '1 microsecond')
FROM vehicle v WHERE v.vehicle_id = l.vehicle_id AND v.name = %(name)s AND l.valid_to IS NULL
RETURNING l.link_id
"""


async def _all(pool: AsyncConnectionPool, sql: str, params: Any) -> list[Row]:
    """The rows of one read-only statement, in one round trip: BEGIN, the statement and COMMIT
    sent together (otherwise three)."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        async with conn.pipeline():
            await cur.execute(sql, params)
            await conn.execute(b"COMMIT")
        return await cur.fetchall()


async def _one(pool: AsyncConnectionPool, sql: str, params: Any) -> Row | None:
    rows = await _all(pool, sql, params)
    return rows[0] if rows else None


async def find_token(pool: AsyncConnectionPool, token_hash: bytes) -> str | None:
    row = await _one(pool, _FIND_TOKEN, (token_hash,))
    return None if row is None else str(row["scope"])


async def vehicle_status(
    pool: AsyncConnectionPool, name: str, online_since: datetime, warning_c: float
) -> Row | None:
    params = {"name": name, "online_since": online_since, "warning_c": warning_c}
    return await _one(pool, _VEHICLE_STATUS, params)


async def meter_status(pool: AsyncConnectionPool, name: str, online_since: datetime) -> Row | None:
    return await _one(pool, _METER_STATUS, {"name": name, "online_since": online_since})


async def overview(pool: AsyncConnectionPool, online_since: datetime, warning_c: float) -> Row:
    row = await _one(pool, _OVERVIEW, {"online_since": online_since, "warning_c": warning_c})
    assert row is not None  # an aggregate always returns its row
    return row


async def vehicle_list(
    pool: AsyncConnectionPool,
    *,
    online_since: datetime,
    warning_c: float,
    charging: bool | None,
    warning: bool | None,
    after: str | None,
    limit: int,
) -> list[Row]:
    params = {
        "online_since": online_since,
        "warning_c": warning_c,
        "charging": charging,
        "warning": warning,
        "after": after,
        "limit": limit,
    }
    return await _all(pool, _VEHICLE_LIST, params)


async def meter_list(
    pool: AsyncConnectionPool,
    *,
    online_since: datetime,
    online: bool | None,
    linked: bool | None,
    after: str | None,
    limit: int,
) -> list[Row]:
    params = {
        "online_since": online_since,
        "online": online,
        "linked": linked,
        "after": after,
        "limit": limit,
    }
    return await _all(pool, _METER_LIST, params)


async def gateway_latest(pool: AsyncConnectionPool) -> datetime | None:
    row = await _one(pool, _GATEWAY_LATEST, ())
    return None if row is None else row["greatest"]


async def current_links(pool: AsyncConnectionPool, after: str | None, limit: int) -> list[Row]:
    """The links that hold now, by vehicle name, after the vehicle ``after``."""
    return await _all(pool, _CURRENT_LINKS, {"after": after, "limit": limit})


async def vehicle_links(pool: AsyncConnectionPool, vehicle: str) -> list[Row]:
    return await _all(pool, _VEHICLE_LINKS, (vehicle,))


async def vehicle_exists(pool: AsyncConnectionPool, vehicle: str) -> bool:
    return await _one(pool, "SELECT 1 FROM vehicle WHERE name = %s", (vehicle,)) is not None


async def link(pool: AsyncConnectionPool, vehicle: str, meter: str, since: datetime) -> bool:
    """Link ``vehicle`` to ``meter`` from ``since``, ending its previous link there. False if
    the link already holds (nothing changed)."""
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.execute(_LOCK_LINKS)
        await cur.execute(_VEHICLE_ID, (vehicle,))
        vehicle_row = await cur.fetchone()
        if vehicle_row is None:
            raise NotFoundError(f"unknown vehicle {vehicle!r}", "vehicleId")
        await cur.execute(_METER_ID, (meter,))
        meter_row = await cur.fetchone()
        if meter_row is None:
            raise NotFoundError(f"unknown meter {meter!r}", "meterId")
        vehicle_id, meter_id = vehicle_row[0], meter_row[0]
        await cur.execute(_LATEST_LINK, (vehicle_id,))
        latest = await cur.fetchone()
        if latest is not None:
            _, latest_meter, valid_from, valid_to = latest
            if valid_to is None and latest_meter == meter_id:
                return False
            if since <= (valid_to or valid_from):
                raise ConflictError(
                    f"vehicle {vehicle!r} has a link until {(valid_to or valid_from).isoformat()}"
                    "; a new link must begin after it",
                    "since",
                )
        await cur.execute(_METER_TAKEN, {"meter": meter_id, "vehicle": vehicle_id, "since": since})
        taken = await cur.fetchone()
        if taken is not None:
            raise ConflictError(
                f"meter {meter!r} feeds vehicle {taken[0]!r} after {since.isoformat()}; "
                f"end that link first (DELETE /v1/links/{taken[0]})",
                "meterId",
            )
        if latest is not None and latest[3] is None:
            await cur.execute(_END_LINK, (since, latest[0]))
        await cur.execute(_INSERT_LINK, (vehicle_id, meter_id, since))
    return True


async def end_link(pool: AsyncConnectionPool, vehicle: str, at: datetime) -> bool:
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(_LOCK_LINKS)
        cur = await conn.execute(_END_CURRENT_LINK, {"at": at, "name": vehicle})
        return await cur.fetchone() is not None
