"""HTTP ingestion recovers by itself, within seconds, from whatever ends its broker connection:
a publish the broker refused, a broker restart, an unforeseen error in the client. While it
cannot publish, ingestion answers 503 at once, GET /health/ready says the broker is down (503)
and GET /health is degraded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from gateway.settings import MqttAddress
from http_api import publisher as publisher_module
from http_api.app import create_app
from http_api.errors import BrokerUnavailableError
from http_api.keys import PUBLISHER
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token
from tests.http_helpers import Api, contract_client, meter_reading
from tests.services import Mosquitto
from tests.support import RunningGateway, count, wait_until

pytest_plugins = ["tests.http_fixtures"]

StartGateway = Callable[..., Awaitable[RunningGateway]]
# Recovery is a reconnect: growing delays capped at 2 s, so a few seconds after the broker is
# back at most. The publish timeout (5 s by default) is far longer: these bounds fail if a
# request waited for it.
RECOVERY_S = 5.0


@pytest.fixture
async def own_broker() -> AsyncIterator[Mosquitto]:
    broker = await asyncio.to_thread(Mosquitto)
    yield broker
    await asyncio.to_thread(broker.close)


def _reading(offset_s: int) -> dict[str, Any]:
    at = (
        datetime.now(UTC).replace(microsecond=0)
        - timedelta(minutes=5)
        + timedelta(seconds=offset_s)
    )
    return meter_reading("M-rec", at, 1.0)


async def _accepted(api: Api, offset_s: int) -> bool:
    return (await api.send("POST", "/v1/telemetry", _reading(offset_s)))[0] == 202


async def _stored(database_url: str, expected: int) -> None:
    async def enough() -> bool:
        return await count(database_url, "SELECT count(*) FROM meter_reading") >= expected

    await wait_until(enough, seconds=10, what=f"{expected} readings stored by the gateway")


async def test_a_publish_the_broker_refuses_does_not_stop_ingestion(
    api: Api, database_url: str, start_gateway: StartGateway
) -> None:
    """The broker drops a connection that publishes to a topic with a newline. The API no longer
    sends one (its ids are whole-string matches), so the publisher is given one directly."""
    await start_gateway()
    assert await _accepted(api, 0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await api.client.app[PUBLISHER].publish("fleet/meter/M-rec\n", b"{}")
    assert time.monotonic() - started < 1.0, "the drop should end the wait, not the timeout"
    await wait_until(lambda: _accepted(api, 1), seconds=RECOVERY_S, what="ingestion again")
    health = await api.client.get("/health")
    assert health.status == 200, await health.json()
    await _stored(database_url, 2)


async def test_after_a_broker_restart_ingestion_and_health_recover_within_seconds(
    api_settings: ApiSettings, own_broker: Mosquitto, database_url: str, start_gateway: StartGateway
) -> None:
    address = MqttAddress.parse(own_broker.url)
    client = contract_client(create_app(api_settings.replace(mqtt=address)))
    await start_gateway(mqtt=address)
    async with client:
        _, token = await create_token(database_url, "write")
        api = Api(client, api_settings, token, token)
        assert await _accepted(api, 0)

        await asyncio.to_thread(own_broker.stop)

        async def ready_says_broker_down() -> bool:
            response = await client.get("/health/ready")
            body = await response.json()
            return response.status == 503 and body["broker"]["ok"] is False

        await wait_until(ready_says_broker_down, seconds=2, what="/health/ready to say")
        response = await client.get("/health")
        health = await response.json()
        assert (response.status, health["status"], health["database"]["ok"]) == (
            200,
            "degraded",
            True,
        )
        broker_down = "broker unreachable: HTTP ingestion answers 503 until it is back"
        assert broker_down in health["reasons"]
        started = time.monotonic()
        status, body = await api.send("POST", "/v1/telemetry", _reading(1))
        assert (status, body["error"]["code"]) == (503, "brokerUnavailable"), body
        assert time.monotonic() - started < 1.0, "refused at once while disconnected"

        await asyncio.to_thread(own_broker.start)
        await wait_until(lambda: _accepted(api, 2), seconds=RECOVERY_S, what="ingestion again")
        ready = await client.get("/health/ready")
        assert ready.status == 200, await ready.json()
        await _stored(database_url, 2)


async def test_an_unforeseen_error_in_the_connection_is_followed_by_a_new_one(
    api_settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything the MQTT client raises ends only that connection: the publisher starts over with
    a new client. (The mock only injects the fault, on the first connection.)"""
    real_drain = publisher_module._drain
    connections = 0

    async def failing_once(client: aiomqtt.Client) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            raise RuntimeError("injected fault")
        await real_drain(client)

    monkeypatch.setattr(publisher_module, "_drain", failing_once)
    client = contract_client(create_app(api_settings))
    async with client:
        _, token = await create_token(api_settings.database_url, "write")
        api = Api(client, api_settings, token, token)
        await wait_until(lambda: _accepted(api, 0), seconds=RECOVERY_S, what="ingestion")
        assert connections == 2
