"""Faults: the database, the broker or the gateway itself going away mid-stream. Nothing that was
published with QoS 1 may be lost, and nothing may be stored twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from gateway.settings import Settings
from tests.services import Mosquitto, Postgres
from tests.support import GatewayProcess, StartGateway, count, wait_until

pytestmark = pytest.mark.slow

START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)


def reading(device: int, minute: int) -> bytes:
    at = START + timedelta(minutes=minute)
    return json.dumps(
        {
            "meterId": f"M-{device}",
            "kwhConsumedAc": 0.25,
            "voltage": 230,
            "timestamp": at.isoformat().replace("+00:00", "Z"),
        }
    ).encode()


async def publish_readings(port: int, devices: int, minutes: range, pause: float = 0.0) -> int:
    """Publish devices x minutes readings at QoS 1; returns how many."""
    sent = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}"
    ) as client:
        for minute in minutes:
            for device in range(devices):
                await client.publish(f"fleet/meter/M-{device}", reading(device, minute), qos=1)
                sent += 1
            if pause:
                await asyncio.sleep(pause)
    return sent


async def history_count(database_url: str) -> int:
    return await count(database_url, "SELECT count(*) FROM meter_reading")


@pytest.fixture
async def restartable_postgres(postgres: Postgres) -> AsyncIterator[Postgres]:
    yield postgres
    ready = [str(postgres.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(postgres.port)]
    if (await asyncio.to_thread(subprocess.run, ready, check=False)).returncode != 0:
        await asyncio.to_thread(postgres.start)


async def test_database_stopped_mid_stream_loses_nothing(
    start_gateway: StartGateway,
    restartable_postgres: Postgres,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    await start_gateway(batch_size=50)
    publishing = asyncio.create_task(
        publish_readings(mosquitto.port, devices=20, minutes=range(30), pause=0.05)
    )
    await wait_until(lambda: _at_least(database_url, 100), what="first readings")
    await asyncio.to_thread(restartable_postgres.stop)
    await asyncio.sleep(2.0)  # the gateway keeps receiving, retries, acknowledges nothing
    await asyncio.to_thread(restartable_postgres.start)
    sent = await publishing
    await wait_until(lambda: _at_least(database_url, sent), seconds=60, what="all readings")
    assert await history_count(database_url) == sent == 600
    assert await count(database_url, "SELECT sum(readings) FROM meter_hourly") == sent


async def _at_least(database_url: str, expected: int) -> bool:
    return await history_count(database_url) >= expected


async def test_no_ack_before_commit_messages_taken_while_database_is_down_survive_a_kill(
    settings: Settings,
    restartable_postgres: Postgres,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    first = GatewayProcess(settings)
    gateway_process.append(first)
    first.start()
    await first.wait_subscribed(database_url)
    await asyncio.to_thread(restartable_postgres.stop)
    sent = await publish_readings(mosquitto.port, devices=10, minutes=range(10))
    await asyncio.sleep(1.5)  # the gateway has taken them, and cannot commit them
    first.kill()  # SIGKILL: nothing flushed, nothing acknowledged
    await asyncio.to_thread(restartable_postgres.start)
    second = GatewayProcess(settings)
    gateway_process.append(second)
    second.start()
    await wait_until(lambda: _at_least(database_url, sent), seconds=60, what="redelivered readings")
    assert await history_count(database_url) == sent == 100


async def test_gateway_killed_mid_stream_and_restarted_stores_every_message_once(
    settings: Settings,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    first = GatewayProcess(settings, BATCH_SIZE="100")
    gateway_process.append(first)
    first.start()
    await first.wait_subscribed(database_url)
    publishing = asyncio.create_task(
        publish_readings(mosquitto.port, devices=50, minutes=range(60), pause=0.02)
    )
    await wait_until(lambda: _at_least(database_url, 500), seconds=30, what="first readings")
    first.kill()
    await asyncio.sleep(0.5)
    second = GatewayProcess(settings, BATCH_SIZE="100")
    gateway_process.append(second)
    second.start()
    sent = await publishing
    await wait_until(lambda: _at_least(database_url, sent), seconds=60, what="every reading")
    await asyncio.sleep(0.5)
    assert await history_count(database_url) == sent == 3000
    assert await count(database_url, "SELECT sum(readings) FROM meter_hourly") == sent


async def test_sigterm_commits_and_acknowledges_what_was_taken_then_exits_0(
    settings: Settings,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    # A long batch age holds the messages uncommitted until the signal arrives.
    gateway = GatewayProcess(settings, BATCH_AGE_MS="60000")
    gateway_process.append(gateway)
    gateway.start()
    await gateway.wait_subscribed(database_url)
    sent = await publish_readings(mosquitto.port, devices=20, minutes=range(10))
    await asyncio.sleep(1.0)
    assert await history_count(database_url) == 0  # taken, not yet committed
    gateway.signal(signal.SIGTERM)
    returncode, output = await gateway.wait_exit(seconds=30)
    assert returncode == 0, output
    assert await history_count(database_url) == sent == 200
    # Acknowledged: the broker has nothing left to redeliver to the gateway's session.
    redelivered: list[str] = []
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=settings.client_id, clean_session=False
    ) as session:
        await session.subscribe("fleet/#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                async for message in session.messages:
                    if not message.retain:  # retained alerts of other tests are not ours
                        redelivered.append(message.topic.value)
    assert redelivered == []


async def test_broker_restart_reconnects_and_stores_everything_once(
    start_gateway: StartGateway, mosquitto: Mosquitto, database_url: str
) -> None:
    running = await start_gateway()
    first = await publish_readings(mosquitto.port, devices=10, minutes=range(5))
    await wait_until(lambda: _at_least(database_url, first), what="readings before the restart")
    await asyncio.to_thread(mosquitto.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(mosquitto.start)
    await wait_until(
        lambda: _subscribed(running.gateway.subscribed), seconds=30, what="gateway reconnected"
    )
    second = await publish_readings(mosquitto.port, devices=10, minutes=range(5, 10))
    await wait_until(lambda: _at_least(database_url, first + second), what="readings after")
    assert await history_count(database_url) == first + second == 100


async def _subscribed(event: asyncio.Event) -> bool:
    return event.is_set()
