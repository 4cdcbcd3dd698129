"""Memory stays bounded while a backlog drains: the gateway stops reading its socket above a
high-water mark (Mosquitto 2.0.11 does not hold its in-flight window once acks flow)."""

from __future__ import annotations

import asyncio
import contextlib

from tests.e2e.test_faults import publish_readings
from tests.services import Mosquitto
from tests.support import StartGateway, count, wait_until


async def test_a_backlog_drains_with_a_bounded_local_queue_and_nothing_lost(
    start_gateway: StartGateway, mosquitto: Mosquitto, database_url: str
) -> None:
    first = await start_gateway(batch_size=50, alerts_enabled=False)
    await first.close()  # the persistent session stays on the broker and queues for it
    sent = await publish_readings(mosquitto.port, devices=100, minutes=range(100))
    running = await start_gateway(batch_size=50, alerts_enabled=False)
    broker = running.gateway.broker
    deepest = 0

    async def watch() -> None:
        nonlocal deepest
        while True:
            deepest = max(deepest, broker.waiting)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await wait_until(
            lambda: _stored(database_url, sent), seconds=60, what="the whole backlog stored"
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert await count(database_url, "SELECT count(*) FROM meter_reading") == sent == 10_000
    # Right after reconnecting, before SUBACK, the broker sends up to its in-flight window
    # (max_inflight_messages 2000 in mosquitto/fleetgate.conf) and that window holds; once
    # acks flow, the gateway's own high-water mark (4 x BATCH_SIZE) is what holds.
    assert 0 < deepest <= 2000
    assert broker.waiting == 0


async def _stored(database_url: str, expected: int) -> bool:
    return await count(database_url, "SELECT count(*) FROM meter_reading") >= expected
