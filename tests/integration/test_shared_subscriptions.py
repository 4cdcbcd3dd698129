"""Asking a real Mosquitto whether it deals shared subscriptions, as a gateway with
GATEWAY_SESSIONS above 1 does before it starts: it does, and asking disturbs no session (the
RabbitMQ side is in tests/e2e/test_rabbitmq.py)."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt

from gateway.broker_logins import Login, hash_secret
from gateway.broker_sync import SyncSettings, reload_broker, write_files
from gateway.shared_subscriptions import ask_broker
from tests.services import Mosquitto


async def test_an_anonymous_mosquitto_says_it_deals_them(mosquitto: Mosquitto) -> None:
    verdict = await ask_broker("127.0.0.1", mosquitto.port, "fleetgate-gateway")
    assert verdict.shared is True, verdict


async def test_the_secure_mosquitto_is_asked_without_taking_over_a_session() -> None:
    """Every login's client id is its username there: asking with the session's login would
    take its session over. Asked without one, the broker refuses in MQTT 5 (so it speaks it),
    and the session's connection stays up and receives."""
    server = await asyncio.to_thread(Mosquitto, secure=True)
    try:
        logins = [
            Login("fleetgate-gateway-0", hash_secret("s"), "gateway"),
            Login("meter/A", hash_secret("d"), "device"),
        ]
        write_files(
            SyncSettings("", server.password_file, server.acl_file, server.pid_file, 30), logins
        )
        reload_broker(server.pid_file)
        await asyncio.sleep(0.5)
        session = aiomqtt.Client(
            "127.0.0.1",
            server.port,
            username="fleetgate-gateway-0",
            password="s",
            identifier="fleetgate-gateway-0",
            clean_session=False,
        )
        async with session:
            await session.subscribe("fleet/#", qos=1)
            verdict = await ask_broker("127.0.0.1", server.port, "fleetgate-gateway-0")
            assert verdict.shared is None, verdict
            assert "reason 0x87" in verdict.answer  # not authorised, in MQTT 5
            device = aiomqtt.Client(
                "127.0.0.1", server.port, username="meter/A", password="d", identifier="x"
            )
            async with device:
                await device.publish("fleet/meter/A", uuid.uuid4().bytes, qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(session.messages))
        assert message.topic.value == "fleet/meter/A"
    finally:
        await asyncio.to_thread(server.close)
