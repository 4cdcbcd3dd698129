"""The API when what it depends on fails: the database refusing connections, the broker gone.
Each answers 503 with a JSON body that says which, and the API recovers by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from gateway.settings import MqttAddress
from http_api.app import create_app
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token
from tests.http_helpers import Api, contract_client, meter_reading
from tests.services import Mosquitto, Postgres
from tests.support import RunningGateway, count, wait_until

pytest_plugins = ["tests.http_fixtures"]

StartGateway = Callable[..., Awaitable[RunningGateway]]


def _set_database_reachable(postgres: Postgres, database_url: str, reachable: bool) -> None:
    """Refuse (or allow again) new connections to the test's database and, when refusing, end
    the ones it has: what the API sees of a database that went down."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(reachable).lower()}".encode())
        if not reachable:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


@pytest.fixture
async def unreachable_database(
    postgres: Postgres, database_url: str
) -> AsyncIterator[Callable[[bool], Awaitable[None]]]:
    async def set_reachable(reachable: bool) -> None:
        await asyncio.to_thread(_set_database_reachable, postgres, database_url, reachable)

    yield set_reachable
    await set_reachable(True)


async def test_database_down_is_a_503_with_retry_after_then_the_api_recovers(
    api: Api, unreachable_database: Callable[[bool], Awaitable[None]]
) -> None:
    assert (await api.get("/v1/status/overview"))[0] == 200
    await unreachable_database(False)

    for method, path, body in (
        ("GET", "/v1/status/overview", None),
        ("GET", "/v1/analytics/performance/EV-1", None),
        ("POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-1"}),
    ):
        response = await api.client.request(
            method,
            path,
            json=body,
            headers=api.headers(api.write_token if method == "POST" else api.read_token),
        )
        answer = await response.json()
        assert response.status == 503, (path, answer)
        assert answer["error"]["code"] == "databaseUnavailable"
        assert response.headers["Retry-After"] == "5"
        assert response.headers["X-Request-Id"]
        assert "Traceback" not in await response.text()

    health = await api.client.get("/health")
    assert health.status == 503
    assert (await health.json())["database"]["ok"] is False

    await unreachable_database(True)

    async def answers_again() -> bool:
        return (await api.get("/v1/status/overview"))[0] == 200

    await wait_until(answers_again, seconds=30, what="the API to reconnect to the database")


@pytest.fixture
async def own_broker() -> AsyncIterator[Mosquitto]:
    broker = await asyncio.to_thread(Mosquitto)
    yield broker
    await asyncio.to_thread(broker.close)


async def test_broker_down_http_ingestion_is_a_503_then_publishes_again(
    api_settings: ApiSettings,
    own_broker: Mosquitto,
    database_url: str,
    start_gateway: StartGateway,
) -> None:
    settings = api_settings.replace(mqtt=MqttAddress.parse(own_broker.url), publish_timeout_s=2.0)
    client = contract_client(create_app(settings))
    await start_gateway(mqtt=MqttAddress.parse(own_broker.url))
    async with client:
        _, token = await create_token(database_url, "write", "ops")
        api = Api(client, settings, token, token)
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

        await asyncio.to_thread(own_broker.stop)
        status, body = await api.send("POST", "/v1/telemetry", meter_reading("M-down", at, 1.0))
        assert (status, body["error"]["code"]) == (503, "brokerUnavailable"), body
        health = await (await client.get("/health")).json()
        assert health["broker"]["ok"] is False

        await asyncio.to_thread(own_broker.start)

        async def accepted() -> bool:
            later = at + timedelta(seconds=1)
            reading = meter_reading("M-down", later, 1.0)
            return (await api.send("POST", "/v1/telemetry", reading))[0] == 202

        await wait_until(accepted, seconds=30, what="HTTP ingestion to publish again")

        # What was accepted after the restart reaches the database through the gateway.
        async def stored() -> bool:
            return await count(database_url, "SELECT count(*) FROM meter_reading") >= 1

        await wait_until(stored, seconds=30, what="the accepted reading stored")
