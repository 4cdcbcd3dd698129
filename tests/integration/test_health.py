"""The API's health: liveness answers whatever is down, readiness names the database or broker
that is unreachable, and the summary judges each gateway by its heartbeat, not by how recent
the fleet's data is: a quiet fleet is ok, a stopped or silent gateway makes it degraded."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.database import apply_schema
from gateway.settings import MqttAddress, Settings
from http_api.health import GatewayHeartbeat, HealthCheck, judge_heartbeats, summarise
from http_api.settings import Settings as ApiSettings
from tests.e2e.test_http_faults import _set_database_reachable
from tests.http_helpers import Api, meter_reading, serving, write_readings
from tests.services import Mosquitto, Postgres
from tests.support import GatewayProcess, LoginAs, StartGateway, query, wait_until

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)


async def get(api: Api, path: str) -> tuple[int, Any]:
    response = await api.client.get(path)  # no token: health is for orchestrators
    return response.status, await response.json()


def has(
    path: str, api: Api, expected_status: int, **fields: object
) -> Callable[[], Awaitable[bool]]:
    """A check for wait_until: ``path`` answers ``expected_status`` with these top fields."""

    async def check() -> bool:
        status, body = await get(api, path)
        return status == expected_status and all(body.get(k) == v for k, v in fields.items())

    return check


@pytest.fixture
async def own_broker() -> AsyncIterator[Mosquitto]:
    broker = await asyncio.to_thread(Mosquitto)
    yield broker
    await asyncio.to_thread(broker.close)


async def test_live_answers_and_ready_names_the_database_while_it_is_down(
    api: Api, postgres: Postgres, database_url: str
) -> None:
    assert await get(api, "/health/ready") == (
        200,
        {
            "status": "ready",
            "reasons": [],
            "database": {"ok": True, "error": None},
            "broker": {"ok": True, "error": None},
        },
    )
    await asyncio.to_thread(_set_database_reachable, postgres, database_url, False)
    try:
        assert await get(api, "/health/live") == (200, {"status": "live"})
        status, ready = await get(api, "/health/ready")
        assert (status, ready["status"], ready["database"]["ok"]) == (503, "notReady", False)
        assert ready["broker"]["ok"] is True
        assert [reason.split(":")[0] for reason in ready["reasons"]] == ["database unreachable"]
        status, summary = await get(api, "/health")
        assert (status, summary["status"], summary["gateways"]) == (503, "down", [])
        assert summary["reasons"][0].startswith("database unreachable")
        assert await get(api, "/health/live") == (200, {"status": "live"})
    finally:
        await asyncio.to_thread(_set_database_reachable, postgres, database_url, True)
    await wait_until(has("/health/ready", api, 200, status="ready"), 30, "ready again")


async def test_a_quiet_fleet_is_ok_while_a_gateway_beats_and_degraded_once_it_stops(
    api: Api, database_url: str, start_gateway: StartGateway, settings: Settings
) -> None:
    status, body = await get(api, "/health")
    assert (status, body["status"], body["gateways"]) == (200, "degraded", [])
    assert body["reasons"] == ["no running gateway has recorded a heartbeat within 30 s"]

    # A fleet quiet for an hour (the night): its newest reading says so, and nothing fails.
    await write_readings(database_url, [meter_reading("M-quiet", NOW - timedelta(hours=1), 1.0)])
    await query(
        database_url, "UPDATE meter SET received_at = now() - interval '1 hour' RETURNING 1"
    )
    gateway = await start_gateway(heartbeat_interval_s=0.2)
    await wait_until(has("/health", api, 200, status="ok"), what="/health ok")
    body = (await get(api, "/health"))[1]
    assert body["reasons"] == []
    [beat] = body["gateways"]
    assert beat["clientId"] == settings.client_id
    assert (beat["state"], beat["brokerConnected"], beat["backlog"]) == ("running", True, 0)
    assert (beat["writeError"], beat["stoppedAt"]) == (None, None)
    assert (beat["sessions"], beat["leader"]) == ([0], True)  # a lone gateway: all of it
    assert beat["secondsSinceBeat"] < 30
    latest = datetime.fromisoformat(body["latestReadingReceivedAt"])
    assert timedelta(minutes=59) < datetime.now(UTC) - latest < timedelta(minutes=61)

    await gateway.close()  # stopped on purpose: it says so at once
    status, body = await get(api, "/health")
    assert (status, body["status"]) == (200, "degraded")
    assert [beat["state"] for beat in body["gateways"]] == ["stopped"]
    assert body["reasons"] == ["no running gateway has recorded a heartbeat within 30 s"]
    status, ready = await get(api, "/health/ready")
    assert status == 200, ready  # the API itself can serve: readiness is about the API


async def test_a_killed_gateway_goes_stale_after_the_heartbeat_max_age(
    api_settings: ApiSettings,
    settings: Settings,
    gateway_process: list[GatewayProcess],
) -> None:
    process = GatewayProcess(settings, HEARTBEAT_INTERVAL_S="0.2")
    gateway_process.append(process)
    process.start()
    async with serving(api_settings.replace(heartbeat_max_age_s=1.0)) as api:
        await wait_until(has("/health", api, 200, status="ok"), 30, "the gateway's heartbeat")
        process.signal(signal.SIGKILL)  # no chance to say it stops

        async def stale() -> bool:
            body = (await get(api, "/health"))[1]
            return [beat["state"] for beat in body["gateways"]] == ["stale"]

        await wait_until(stale, what="the killed gateway to go stale")
        status, body = await get(api, "/health")
        assert (status, body["status"]) == (200, "degraded")
        name = repr(settings.client_id)
        assert body["reasons"][0] == "no running gateway has recorded a heartbeat within 1 s"
        assert body["reasons"][1].startswith(f"gateway {name}: no heartbeat for ")


async def test_a_gateway_cut_off_from_its_broker_makes_the_summary_degraded(
    api: Api, start_gateway: StartGateway, settings: Settings, own_broker: Mosquitto
) -> None:
    """The gateway's broker stops (the API's does not): its heartbeat says so."""
    await start_gateway(mqtt=MqttAddress.parse(own_broker.url), heartbeat_interval_s=0.2)
    await wait_until(has("/health", api, 200, status="ok"), what="/health ok")
    await asyncio.to_thread(own_broker.stop)
    await wait_until(has("/health", api, 200, status="degraded"), what="/health degraded")
    body = (await get(api, "/health"))[1]
    assert body["reasons"] == [f"gateway {settings.client_id!r}: not connected to its broker"]
    assert [beat["brokerConnected"] for beat in body["gateways"]] == [False]
    await asyncio.to_thread(own_broker.start)
    await wait_until(has("/health", api, 200, status="ok"), what="/health ok again")


async def test_the_roles_a_gateway_records_its_heartbeat_and_the_api_reads_it(
    database_url: str, login_as: LoginAs, start_gateway: StartGateway, api_settings: ApiSettings
) -> None:
    """As their own database roles (docs/security.md): the gateway writes its row, the API and
    the readonly role read it, and readonly cannot write it."""
    await apply_schema(database_url)  # as its owner would
    await start_gateway(
        database_url=login_as(database_url, "fleetgate_gateway"), heartbeat_interval_s=0.2
    )
    as_api = api_settings.replace(database_url=login_as(database_url, "fleetgate_api"))
    async with serving(as_api) as api:
        await wait_until(has("/health", api, 200, status="ok"), what="/health ok as the roles")
    readonly = login_as(database_url, "fleetgate_readonly")
    [(running,)] = await query(readonly, "SELECT count(*) FROM gateway_heartbeat")
    assert running == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await query(readonly, "UPDATE gateway_heartbeat SET backlog = 0 RETURNING 1")


def _beat(state: str, **changes: Any) -> GatewayHeartbeat:
    fields: dict[str, Any] = {
        "client_id": "gw-1",
        "state": state,
        "host": "h",
        "pid": 1,
        "version": "0.1.0",
        "started_at": NOW,
        "beat_at": NOW,
        "seconds_since_beat": 2.0,
        "broker_connected": True,
        "backlog": 0,
        "write_error": None,
        "stopped_at": None,
        "sessions": [0],
        "leader": True,
        **changes,
    }
    return GatewayHeartbeat(**fields)


def test_the_summary_status_and_its_reasons() -> None:
    up, broker = HealthCheck(ok=True), HealthCheck(ok=True)
    assert summarise(up, broker, [_beat("running")], 30).status == "ok"
    # One replica stopped on purpose while another runs: nothing to look at.
    two = [_beat("running"), _beat("stopped", client_id="gw-2")]
    assert summarise(up, broker, two, 30).reasons == []
    stale = summarise(up, broker, [_beat("running"), _beat("stale", client_id="gw-2")], 30)
    assert (stale.status, stale.reasons) == (
        "degraded",
        ["gateway 'gw-2': no heartbeat for 2 s; no running gateway owns its session 0"],
    )
    off = summarise(up, HealthCheck(ok=False, error="not connected"), [_beat("running")], 30)
    assert (off.status, off.reasons) == (
        "degraded",
        ["broker unreachable: HTTP ingestion answers 503 until it is back"],
    )
    failing = [_beat("running", write_error="InsufficientPrivilege: denied")]
    assert summarise(up, broker, failing, 30).reasons == [
        "gateway 'gw-1': cannot write to the database: InsufficientPrivilege: denied"
    ]
    down = summarise(HealthCheck(ok=False, error="refused"), broker, [], 30)
    assert (down.status, down.reasons) == ("down", ["database unreachable: refused"])


def _row(client_id: str, seconds_since_beat: float, **changes: Any) -> dict[str, Any]:
    """A gateway_heartbeat row as /health reads it (http_api/health.py)."""
    return {
        "client_id": client_id,
        "host": "h",
        "pid": 7,
        "version": "0.1.0",
        "started_at": NOW,
        "beat_at": NOW,
        "seconds_since_beat": seconds_since_beat,
        "broker_connected": True,
        "backlog": 0,
        "write_error": None,
        "stopped_at": None,
        "sessions": [],
        "leader": False,
        "holds_lock": False,
        **changes,
    }


def test_a_silent_unnamed_replica_is_gone_once_running_replicas_hold_its_sessions() -> None:
    """Unnamed replicas' rows are MQTT_CLIENT_ID/host-pid, a name no later process takes: one
    that is silent, holds no lock and whose sessions (and leadership) running replicas of its
    deployment hold is gone, listed but not judged. Anything else silent stays stale."""
    up = HealthCheck(ok=True)

    def judged(*rows: dict[str, Any]) -> tuple[list[str], list[str]]:
        gateways = judge_heartbeats(rows, 30)
        return [gateway.state for gateway in gateways], summarise(up, up, gateways, 30).reasons

    live = [
        _row("fg/r1", 1, sessions=[0, 1, 2], leader=True),
        _row("fg/h-8", 1, sessions=[3, 4, 5], pid=8),
    ]
    dead = _row("fg/h-7", 40, sessions=[2, 3])
    assert judged(*live, dead) == (["running", "running", "gone"], [])
    assert judged(*live, {**dead, "leader": True}) == (["running", "running", "gone"], [])
    assert judged(*live, {**dead, "sessions": []}) == (["running", "running", "gone"], [])
    assert judged(*live, {**dead, "stopped_at": NOW}) == (["running", "running", "stopped"], [])
    # Its lock connection lives (a hung process): what it locked, nobody else can consume.
    assert judged(*live, {**dead, "holds_lock": True}) == (
        ["running", "running", "stale"],
        ["gateway 'fg/h-7': no heartbeat for 40 s; running replicas took its sessions over"],
    )
    # Not (yet) taken over: a session nobody owns keeps /health degraded.
    assert judged(live[0], dead) == (
        ["running", "stale"],
        ["gateway 'fg/h-7': no heartbeat for 40 s; no running gateway owns its session 3"],
    )
    assert judged(_row("other/r1", 1, sessions=[0, 1, 2, 3], leader=True), dead)[0] == [
        "running",
        "stale",
    ]  # another deployment's sessions 2 and 3 are not these
    assert judged({**live[0], "leader": False}, live[1], {**dead, "leader": True})[0] == [
        "running",
        "running",
        "stale",
    ]  # it led and nobody leads now: alerts are not judged
    assert judged({**live[0], "seconds_since_beat": 31}, live[1], dead)[0] == [
        "stale",
        "running",
        "stale",
    ]  # the replica that took session 2 is silent too
    # A named replica is expected back: stale, and /health degraded, even when its sessions
    # were taken over; a lone gateway's row (the client id alone) likewise.
    named = _row("fg/r2", 40, sessions=[2, 3])
    assert judged(*live, named) == (
        ["running", "running", "stale"],
        ["gateway 'fg/r2': no heartbeat for 40 s; running replicas took its sessions over"],
    )
    assert judged(_row("fg", 40, sessions=[0], leader=True))[0] == ["stale"]
