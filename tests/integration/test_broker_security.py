"""The production broker configuration (mosquitto/security.conf with the files that
gateway/broker_logins.py renders) on a real Mosquitto: who may connect, publish and subscribe."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import pytest

from gateway.broker_logins import Login, device_username, hash_secret
from gateway.broker_sync import SyncSettings, reload_broker, write_files
from tests.services import Mosquitto

SECRETS = {
    "meter/A": "secret-a",
    "meter/B": "secret-b",
    "fleetgate-gateway": "secret-gw",
    "fleetgate-alerts": "secret-alerts",
    "alice": "secret-alice",
}
ROLES = {"fleetgate-gateway": "gateway", "fleetgate-alerts": "alerts", "alice": "engineer"}


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    server = Mosquitto(secure=True)
    try:
        grant(server, SECRETS)
        yield server
    finally:
        server.close()


def grant(server: Mosquitto, secrets: dict[str, str]) -> None:
    """Give the broker exactly these logins, as broker_sync does from the registry."""
    logins = [
        Login(name, hash_secret(secret), ROLES.get(name, "device"))  # type: ignore[arg-type]
        for name, secret in secrets.items()
    ]
    settings = SyncSettings("", server.password_file, server.acl_file, server.pid_file, 30)
    write_files(settings, logins)
    reload_broker(server.pid_file)


@contextlib.asynccontextmanager
async def connected(
    server: Mosquitto, username: str | None, *, clean: bool = True, identifier: str = ""
) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1",
        server.port,
        username=username,
        password=SECRETS.get(username or "", "none"),
        identifier=identifier or f"c-{uuid.uuid4().hex[:8]}",
        clean_session=clean,
    ) as client:
        yield client


async def received(client: aiomqtt.Client, seconds: float = 1.0) -> list[tuple[str, bytes]]:
    """What arrives on ``client`` within ``seconds``."""
    messages: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                messages.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
    return messages


async def until_disconnected(client: aiomqtt.Client) -> None:
    async with asyncio.timeout(5):
        async for _ in client.messages:
            pass


async def test_a_device_publishes_to_its_own_topic_only(broker: Mosquitto) -> None:
    async with (
        connected(broker, "fleetgate-gateway") as gateway,
        connected(broker, "meter/A") as device,
    ):
        await gateway.subscribe("fleet/#", qos=1)
        await device.publish("fleet/meter/A", b"own", qos=1)
        await device.publish("fleet/meter/B", b"forged", qos=1)
        await device.publish("fleet/vehicle/A", b"other kind", qos=1)
        await device.publish("fleet/alerts/meter/B/x", b"fake alert", qos=1, retain=True)
        await device.publish("fleet/alerts/meter/B/x", b"", qos=1, retain=True)
        assert await received(gateway) == [("fleet/meter/A", b"own")]


async def test_a_device_reads_nothing_of_the_fleet(broker: Mosquitto) -> None:
    async with (
        connected(broker, "meter/A") as spy,
        connected(broker, "meter/B") as other,
        connected(broker, "fleetgate-alerts") as alerts,
    ):
        await spy.subscribe("fleet/#", qos=1)
        await spy.subscribe("fleet/meter/B", qos=1)
        await other.publish("fleet/meter/B", b"private", qos=1)
        await alerts.publish("fleet/alerts/meter/B/voltage", b"alert", qos=1)
        assert await received(spy) == []


async def test_only_the_gateway_publishes_alerts_and_engineers_only_read_them(
    broker: Mosquitto,
) -> None:
    async with (
        connected(broker, "alice") as engineer,
        connected(broker, "fleetgate-alerts") as alerts,
        connected(broker, "fleetgate-gateway") as gateway,
    ):
        await engineer.subscribe("fleet/#", qos=1)
        await gateway.subscribe("fleet/#", qos=1)
        await alerts.publish("fleet/alerts/meter/A/voltage", b"real", qos=1)
        await engineer.publish("fleet/alerts/meter/A/voltage", b"forged by an engineer", qos=1)
        await engineer.publish("fleet/meter/A", b"reading by an engineer", qos=1)
        assert await received(engineer) == [("fleet/alerts/meter/A/voltage", b"real")]
        assert await received(gateway, 0.3) == [("fleet/alerts/meter/A/voltage", b"real")]


async def test_anonymous_and_wrong_secrets_are_refused(broker: Mosquitto) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with connected(broker, None):
            pass
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with aiomqtt.Client("127.0.0.1", broker.port, username="meter/A", password="wrong"):
            pass


async def test_nobody_else_can_take_the_gateways_session(broker: Mosquitto) -> None:
    async with connected(broker, "fleetgate-gateway", clean=False) as gateway:
        await gateway.subscribe("fleet/#", qos=1)
    async with connected(broker, "meter/A") as device:  # the gateway is away: queued for it
        for number in range(10):
            await device.publish("fleet/meter/A", str(number).encode(), qos=1)
    # A client with the gateway's id and a clean session would wipe the queue: it gets its own.
    async with connected(broker, "meter/A", identifier="fleetgate-gateway", clean=True):
        pass
    async with connected(broker, "fleetgate-gateway", clean=False) as gateway:
        queued = await received(gateway)
    assert [payload for _, payload in queued] == [str(n).encode() for n in range(10)]


async def test_a_removed_login_is_disconnected_and_a_rotated_secret_refused(
    broker: Mosquitto,
) -> None:
    async with connected(broker, "meter/B") as device:
        grant(broker, {name: s for name, s in SECRETS.items() if name != "meter/B"})
        try:
            with pytest.raises(aiomqtt.MqttError):
                await until_disconnected(device)
        finally:
            grant(broker, SECRETS)
    grant(broker, SECRETS | {"meter/B": "rotated"})
    try:
        with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
            async with connected(broker, "meter/B"):  # still the old secret
                pass
    finally:
        grant(broker, SECRETS)


async def test_a_device_connects_over_tls_with_the_private_ca(broker: Mosquitto) -> None:
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    async with (
        connected(broker, "fleetgate-gateway") as gateway,
        aiomqtt.Client(
            "127.0.0.1",
            broker.tls_port,
            username=device_username("meter", "A"),
            password=SECRETS["meter/A"],
            tls_context=context,
        ) as device,
    ):
        await gateway.subscribe("fleet/#", qos=1)
        await device.publish("fleet/meter/A", b"over tls", qos=1)
        assert await received(gateway) == [("fleet/meter/A", b"over tls")]
    with pytest.raises(aiomqtt.MqttError):  # a client that trusts only the public CAs
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.tls_port,
            username="meter/A",
            password=SECRETS["meter/A"],
            tls_context=ssl.create_default_context(),
        ):
            pass
