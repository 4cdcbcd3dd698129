"""The API's health: liveness, readiness (database and broker reachable) and a summary that also
judges each gateway by the heartbeat it records, never by how recent the fleet's data is.

The summary is ``ok``; ``degraded`` (still 200: the API serves, but something needs a look: no
running gateway, one silent, one off its broker or failing to write, the API's broker
unreachable, a read replica unusable so that its reads go to the primary); or ``down`` (503:
the database is unreachable, so nothing works). A silent unnamed replica whose sessions the
running replicas took over is ``gone``, listed but no longer judged: it was named after its
process (host-pid), so nothing will ever beat as it again, and nothing waits for it.
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

# holds_lock: a connection named as the row's unnamed replica would be (host-pid, the
# application_name of its lock connection, gateway/replicas.py) holds an advisory lock, so the
# process lives (maybe hung). pg_locks and pg_stat_activity's application_name show every
# role's sessions, the API's login included.
_HEARTBEATS: Final = b"""
SELECT client_id, host, pid, version, started_at, beat_at, broker_connected, backlog,
       write_error, stopped_at, sessions, leader,
       extract(epoch FROM statement_timestamp() - beat_at)::float8 AS seconds_since_beat,
       coalesce(left(host || '-' || pid, 63) IN (
           SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted
       ), false) AS holds_lock
FROM gateway_heartbeat
WHERE beat_at > statement_timestamp() - make_interval(secs => %(forget_s)s)
ORDER BY client_id
"""

GatewayState = Literal["running", "stale", "gone", "stopped"]
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
    from the database); gone: stale, but an unnamed replica (named host-pid: no process will
    beat as it again) that holds no lock, whose sessions (and leadership, if it led) running
    replicas hold, so that nothing waits for it; stopped: it stopped on purpose."""

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
    return judge_heartbeats(rows, max_age_s), latest


def judge_heartbeats(rows: Sequence[dict[str, Any]], max_age_s: float) -> list[GatewayHeartbeat]:
    """Each row's gateway and its state: a stale one is gone once the running ones hold what
    it held."""
    gateways = [_heartbeat(row, _state(row, max_age_s)) for row in rows]
    for gateway, row in zip(gateways, rows, strict=True):
        if gateway.state == "stale" and _replaced(gateway, row["holds_lock"], gateways):
            gateway.state = "gone"
    return gateways


def _state(row: dict[str, Any], max_age_s: float) -> GatewayState:
    if row["stopped_at"] is not None:
        return "stopped"
    return "running" if row["seconds_since_beat"] <= max_age_s else "stale"


def _replaced(
    gateway: GatewayHeartbeat, holds_lock: bool, gateways: Sequence[GatewayHeartbeat]
) -> bool:
    """Whether a stale gateway is an unnamed replica that no process will beat as again, whose
    work the running replicas of its deployment hold. A named one is expected back; one that
    still holds a lock lives (hung, say) and keeps its sessions from the others."""
    if holds_lock or not gateway.client_id.endswith(_unnamed(gateway)):
        return False
    if _unheld(gateway, gateways):
        return False
    return not gateway.leader or any(other.leader for other in _running(gateway, gateways))


def _unheld(gateway: GatewayHeartbeat, gateways: Sequence[GatewayHeartbeat]) -> list[int]:
    """The sessions ``gateway`` owned at its last beat that no running gateway of its
    deployment says it owns now."""
    held = {session for other in _running(gateway, gateways) for session in other.sessions}
    return [session for session in gateway.sessions if session not in held]


def _running(
    gateway: GatewayHeartbeat, gateways: Sequence[GatewayHeartbeat]
) -> list[GatewayHeartbeat]:
    """The running gateways of ``gateway``'s deployment (one MQTT_CLIENT_ID): its lone gateway
    (the row named by the client id) or its replicas (MQTT_CLIENT_ID/name)."""
    unnamed = _unnamed(gateway)
    if gateway.client_id.endswith(unnamed):
        deployment = gateway.client_id.removesuffix(unnamed)
    else:  # a replica's given name is taken to have no slash
        deployment = gateway.client_id.rsplit("/", 1)[0]
    return [
        other
        for other in gateways
        if other.state == "running"
        and (other.client_id == deployment or other.client_id.startswith(f"{deployment}/"))
    ]


def _unnamed(gateway: GatewayHeartbeat) -> str:
    """How the row's client id of an unnamed replica ends: its name is host-pid
    (gateway/service.py), unique to its process."""
    return f"/{gateway.host}-{gateway.pid}"


def _heartbeat(row: dict[str, Any], state: GatewayState) -> GatewayHeartbeat:
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
            problems.append(
                f"{name}: no heartbeat for {gateway.seconds_since_beat:.0f} s"
                + _sessions_note(gateway, gateways)
            )
        elif gateway.state == "running":
            if not gateway.broker_connected:
                problems.append(f"{name}: not connected to its broker")
            if gateway.write_error is not None:
                problems.append(f"{name}: cannot write to the database: {gateway.write_error}")
    return problems


def _sessions_note(gateway: GatewayHeartbeat, gateways: Sequence[GatewayHeartbeat]) -> str:
    """Whether what a stale gateway owned waits in the broker or was taken over."""
    if not gateway.sessions:
        return ""
    unheld = _unheld(gateway, gateways)
    if not unheld:
        return "; running replicas took its sessions over"
    listed = ", ".join(str(session) for session in unheld)
    return f"; no running gateway owns its session{'s' if len(unheld) > 1 else ''} {listed}"


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
