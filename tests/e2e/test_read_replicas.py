"""The API on a real streaming replica (``pg_basebackup -R`` from a private primary): the
dashboards' reads served by the replica, a write read back from the primary, and reads on the
primary while the replica lags or is stopped, never a wrong answer (issue 17, item 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from fleetgate_tools.private_services import PrivateStandby
from gateway.settings import MqttAddress
from http_api.read_pools import READ_HEADER
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token, revoke_token
from tests.http_helpers import Api, meter_reading, serving, vehicle_reading, write_readings
from tests.services import Mosquitto, Postgres
from tests.support import wait_until

NOW = datetime.now(UTC).replace(microsecond=0)
MAX_LAG_S = 4.0


@pytest.fixture(scope="module")
def primary() -> Iterator[Postgres]:
    server = Postgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def standby(primary: Postgres) -> Iterator[PrivateStandby]:
    replica = PrivateStandby(primary)
    try:
        replica.start()
        yield replica
    finally:
        replica.close()


@pytest.fixture(scope="module")
def second_standby(primary: Postgres) -> Iterator[PrivateStandby]:
    replica = PrivateStandby(primary)
    try:
        replica.start()
        yield replica
    finally:
        replica.close()


def _settings(primary: Postgres, mosquitto: Mosquitto, *replicas: PrivateStandby) -> ApiSettings:
    return ApiSettings.from_env({}).replace(
        database_url=primary.url,
        mqtt=MqttAddress.parse(mosquitto.url),
        enrolment="open",
        token_rate=0.0,
        database_read_urls=tuple(replica.url for replica in replicas),
        max_replica_lag_s=MAX_LAG_S,
        read_your_writes_s=MAX_LAG_S + 2,
    )


@pytest.fixture
async def api(
    primary: Postgres, standby: PrivateStandby, mosquitto: Mosquitto
) -> AsyncIterator[Api]:
    async with serving(_settings(primary, mosquitto, standby)) as running:
        await wait_until(_usable(running), what="the replica usable")
        yield running


def _usable(api: Api, *, usable: bool = True) -> Any:
    async def check() -> bool:
        return bool((await _replica(api))["usable"] is usable)

    return check


async def _replica(api: Api) -> dict[str, Any]:
    _, body = await api.get("/health", token=None)
    [replica] = body["replicas"]
    return dict(replica)


async def _reads(api: Api) -> dict[str, float]:
    """fleetgate_api_reads_total by database, from /metrics."""
    response = await api.client.get("/metrics", headers=api.headers(api.read_token))
    counts = {}
    for line in (await response.text()).splitlines():
        if line.startswith("fleetgate_api_reads_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('"')[1]] = float(value)
    return counts


async def _current_meter(api: Api, token: str, **headers: str) -> str | None:
    response = await api.client.get("/v1/links/EV-1", headers={**api.headers(token), **headers})
    assert response.status == 200, await response.text()
    current = (await response.json())["current"]
    return None if current is None else str(current["meterId"])


def _on_standby(standby: PrivateStandby, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(standby.login_url("postgres", "postgres"), autocommit=True) as conn:
        return conn.execute(sql.encode()).fetchall()


async def test_reads_on_the_replica_and_writes_read_back_from_the_primary(
    api: Api, primary: Postgres, standby: PrivateStandby
) -> None:
    at = NOW - timedelta(minutes=1)
    await write_readings(
        primary.url,
        [vehicle_reading("EV-1", at, 1), meter_reading("M-1", at, 1), meter_reading("M-2", at, 1)],
    )
    standby.wait_for_replay()
    replica = await _replica(api)
    assert replica["inRecovery"] is True
    assert replica["streaming"] is True
    assert 0 <= replica["lagSeconds"] <= MAX_LAG_S
    assert replica["address"] == f"127.0.0.1:{standby.port}/fleetgate"
    before = await _reads(api)
    assert await _current_meter(api, api.read_token) is None
    status, _ = await api.get("/v1/status/overview")
    assert status == 200
    after = await _reads(api)
    assert after["replica-1"] == before["replica-1"] + 2
    assert after["primary"] == before["primary"]
    # The replica's own view: the API's connections there, by the name the pool gives them.
    assert (
        _on_standby(
            standby,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'fleetgate-api-replica-1' AND datname = 'fleetgate'",
        )[0][0]
        >= 1
    )

    # Replay paused: the replica holds still, so what it serves is told apart from the primary.
    _on_standby(standby, "SELECT pg_wal_replay_pause()")
    try:
        status, _ = await api.send("POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-1"})
        assert status == 201
        assert await _current_meter(api, api.write_token) == "M-1"  # its own write: primary
        assert await _current_meter(api, api.read_token, **{READ_HEADER: "primary"}) == "M-1"
        # Another token may see the replica's state for up to MAX_REPLICA_LAG_S ...
        assert (await _replica(api))["lagSeconds"] <= MAX_LAG_S
        # ... and once it lags more, its reads go to the primary.
        await wait_until(_usable(api, usable=False), MAX_LAG_S + 10, "the replica judged behind")
        replica = await _replica(api)
        assert "behind" in replica["error"]
        assert replica["lagSeconds"] > MAX_LAG_S
        _, health = await api.get("/health", token=None)
        assert any("read replica replica-1" in reason for reason in health["reasons"])
        before = await _reads(api)
        assert await _current_meter(api, api.read_token) == "M-1"
        assert (await _reads(api))["primary"] == before["primary"] + 1
    finally:
        _on_standby(standby, "SELECT pg_wal_replay_resume()")
    await wait_until(_usable(api), what="the replica caught up")
    before = await _reads(api)
    assert await _current_meter(api, api.read_token) == "M-1"
    assert (await _reads(api))["replica-1"] == before["replica-1"] + 1


async def test_a_stopped_replica_sends_reads_to_the_primary(
    api: Api, primary: Postgres, standby: PrivateStandby
) -> None:
    at = NOW - timedelta(minutes=2)
    await write_readings(primary.url, [vehicle_reading("EV-2", at, 1)])
    standby.stop()
    try:
        await wait_until(_usable(api, usable=False), what="the stopped replica judged unusable")
        replica = await _replica(api)
        assert replica["error"].startswith("unreachable")
        assert replica["inRecovery"] is None
        before = await _reads(api)
        status, body = await api.get("/v1/links")
        assert status == 200
        status, body = await api.get("/v1/status/vehicle/EV-2")
        assert status == 200, body
        after = await _reads(api)
        assert after["primary"] == before["primary"] + 2
        assert after["replica-1"] == before["replica-1"]
    finally:
        standby.start()
    await wait_until(_usable(api), what="the restarted replica usable again")


async def test_a_revoke_takes_effect_at_once(api: Api, primary: Postgres) -> None:
    """Token checks stay on the primary: a revoked token is refused on its next request, even
    while the replica has not replayed the revoke yet."""
    token_id, token = await create_token(primary.url, "read", "revoked-soon")
    assert (await api.get("/v1/links", token=token))[0] == 200
    assert await revoke_token(primary.url, token_id)

    async def refused() -> bool:
        return bool((await api.get("/v1/links", token=token))[0] == 401)

    await wait_until(refused, 2.0, "the revoked token refused")


async def test_several_replicas_take_reads_in_turn(
    primary: Postgres,
    standby: PrivateStandby,
    second_standby: PrivateStandby,
    mosquitto: Mosquitto,
) -> None:
    async with serving(_settings(primary, mosquitto, standby, second_standby)) as api:

        async def both_usable() -> bool:
            _, health = await api.get("/health", token=None)
            return all(replica["usable"] for replica in health["replicas"])

        await wait_until(both_usable, what="both replicas usable")
        before = await _reads(api)
        for _ in range(4):
            assert (await api.get("/v1/links"))[0] == 200
        after = await _reads(api)
        assert after["replica-1"] - before["replica-1"] == 2
        assert after["replica-2"] - before["replica-2"] == 2
        assert after["primary"] == before["primary"]
