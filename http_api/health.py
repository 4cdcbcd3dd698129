"""The API's health: liveness, readiness (database and broker reachable) and a summary that also
judges each gateway by the heartbeat it records, never by how recent the fleet's data is.

The summary is ``ok``; ``degraded`` (still 200: the API serves, but something needs a look: no
running gateway, one silent, one off its broker or failing to write, the API's broker
unreachable, a read replica unusable so that its reads go to the primary); or ``down`` (503:
the database is unreachable, so nothing works).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from http_api import queries
from http_api.read_pools import ReplicaHealth

# Each look at the database gives up after this: an answer before a health check's own timeout
# (3 s in docker-compose.yml), even while the database does not answer at all.
PROBE_TIMEOUT_S: Final = 2.0

_HEARTBEATS: Final = b"""
SELECT client_id, host, pid, version, started_at, beat_at, broker_connected, backlog,
       write_error, stopped_at, sessions, leader,
       extract(epoch FROM statement_timestamp() - beat_at)::float8 AS seconds_since_beat
FROM gateway_heartbeat
WHERE beat_at > statement_timestamp() - make_interval(secs => %(forget_s)s)
ORDER BY client_id
"""

GatewayState = Literal["running", "stale", "stopped"]
Status = Literal["ok", "degraded", "down"]


class HealthCheck(msgspec.Struct, rename="camel"):
    ok: bool
    error: str | None = None


class HealthLiveness(msgspec.Struct, rename="camel"):
    status: Literal["live"] = "live"


class HealthReadiness(msgspec.Struct, rename="camel"):
    status: Literal["ready", "notReady"]
    reasons: list[str]
    database: HealthCheck
    broker: HealthCheck


class GatewayHeartbeat(msgspec.Struct, rename="camel"):
    """A gateway as its latest heartbeat describes it. running: it beat within
    HEARTBEAT_MAX_AGE_S; stale: it did not, and did not stop on purpose (killed, hung, cut off
    from the database); stopped: it stopped on purpose."""

    client_id: str
    state: GatewayState
    host: str
    pid: int
    version: str
    started_at: datetime
    beat_at: datetime
    seconds_since_beat: float
    broker_connected: bool
    backlog: int  # readings it took from the broker and has not committed yet
    write_error: str | None
    stopped_at: datetime | None
    sessions: list[int]  # the broker sessions it owns (GATEWAY_SESSIONS, replicas)
    leader: bool  # it judges and publishes alerts


class HealthSummary(msgspec.Struct, rename="camel"):
    status: Status
    reasons: list[str]
    database: HealthCheck
    broker: HealthCheck
    gateways: list[GatewayHeartbeat]
    heartbeat_max_age_seconds: float
    latest_reading_received_at: datetime | None  # information only: a quiet fleet is healthy
    replicas: list[ReplicaHealth] = []  # DATABASE_READ_URL's, as last looked at


def one_line(error: BaseException) -> str:
    if isinstance(error, TimeoutError | PoolTimeout):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    return " ".join(str(error).split()) or type(error).__name__


async def database_check(pool: AsyncConnectionPool) -> HealthCheck:
    try:
        async with (
            asyncio.timeout(PROBE_TIMEOUT_S),
            pool.connection(timeout=PROBE_TIMEOUT_S) as conn,
        ):
            await conn.execute(b"SELECT 1")
    except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
        return HealthCheck(ok=False, error=one_line(exc))
    return HealthCheck(ok=True)


def broker_check(connected: bool) -> HealthCheck:
    return HealthCheck(ok=True) if connected else HealthCheck(ok=False, error="not connected")


def readiness(database: HealthCheck, broker: HealthCheck) -> HealthReadiness:
    reasons = _unreachable(database, broker)
    return HealthReadiness("notReady" if reasons else "ready", reasons, database, broker)


async def gateway_heartbeats(
    pool: AsyncConnectionPool, max_age_s: float, forget_s: float
) -> tuple[list[GatewayHeartbeat], datetime | None]:
    """The gateways heard from within ``forget_s``, and when the newest reading was received."""
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        async with (
            pool.connection(timeout=PROBE_TIMEOUT_S) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_HEARTBEATS, {"forget_s": forget_s})
            rows = await cur.fetchall()
        latest = await queries.gateway_latest(pool)
    return [_heartbeat(row, max_age_s) for row in rows], latest


def _heartbeat(row: dict[str, Any], max_age_s: float) -> GatewayHeartbeat:
    if row["stopped_at"] is not None:
        state: GatewayState = "stopped"
    else:
        state = "running" if row["seconds_since_beat"] <= max_age_s else "stale"
    return GatewayHeartbeat(
        client_id=row["client_id"],
        state=state,
        host=row["host"],
        pid=row["pid"],
        version=row["version"],
        started_at=_utc(row["started_at"]),
        beat_at=_utc(row["beat_at"]),
        seconds_since_beat=round(max(row["seconds_since_beat"], 0.0), 1),
        broker_connected=row["broker_connected"],
        backlog=row["backlog"],
        write_error=row["write_error"],
        stopped_at=None if row["stopped_at"] is None else _utc(row["stopped_at"]),
        sessions=list(row["sessions"]),
        leader=row["leader"],
    )


def summarise(
    database: HealthCheck,
    broker: HealthCheck,
    gateways: Sequence[GatewayHeartbeat],
    max_age_s: float,
    latest_reading: datetime | None = None,
    *,
    replicas: Sequence[ReplicaHealth] = (),
) -> HealthSummary:
    """The summary's status and its reasons, from what was seen (``gateways`` is empty when the
    database could not be read)."""
    reasons = _unreachable(database, broker)
    if database.ok:
        reasons.extend(_gateway_problems(gateways, max_age_s))
    reasons.extend(
        f"read replica {replica.name} ({replica.address}) {replica.error}; its reads go to "
        "the primary"
        for replica in replicas
        if not replica.usable
    )
    status: Status = "down" if not database.ok else "degraded" if reasons else "ok"
    return HealthSummary(
        status,
        reasons,
        database,
        broker,
        list(gateways),
        max_age_s,
        None if latest_reading is None else _utc(latest_reading),
        list(replicas),
    )


def _unreachable(database: HealthCheck, broker: HealthCheck) -> list[str]:
    reasons = []
    if not database.ok:
        reasons.append(f"database unreachable: {database.error}")
    if not broker.ok:
        reasons.append("broker unreachable: HTTP ingestion answers 503 until it is back")
    return reasons


def _gateway_problems(gateways: Sequence[GatewayHeartbeat], max_age_s: float) -> list[str]:
    problems = []
    if not any(gateway.state == "running" for gateway in gateways):
        problems.append(f"no running gateway has recorded a heartbeat within {max_age_s:g} s")
    for gateway in gateways:
        name = f"gateway {gateway.client_id!r}"
        if gateway.state == "stale":
            problems.append(f"{name}: no heartbeat for {gateway.seconds_since_beat:.0f} s")
        elif gateway.state == "running":
            if not gateway.broker_connected:
                problems.append(f"{name}: not connected to its broker")
            if gateway.write_error is not None:
                problems.append(f"{name}: cannot write to the database: {gateway.write_error}")
    return problems


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
