"""Helpers of the alert tests: a field engineer's subscription to fleet/alerts/#, a barrier that
says when everything the broker had for it has arrived, and the cleanup of retained alerts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final

import aiomqtt

from tests.services import Mosquitto
from tests.support import wait_until

# Topics under fleet/alerts/ that no gateway publishes: barriers in a subscription.
_BARRIER: Final = "fleet/alerts/test-barrier"


class AlertListener:
    """A field engineer's subscription to fleet/alerts/#."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.removals: list[str] = []  # empty retained messages: a cleared alert's topic
        self.retained: set[str] = set()  # topics whose retained alert arrived
        self.barriers: set[str] = set()
        self.client: aiomqtt.Client | None = None

    def of(self, device: str, rule: str) -> list[str]:
        return [e["state"] for e in self.events if e["deviceId"] == device and e["rule"] == rule]

    async def listen(self, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=f"engineer-{uuid.uuid4().hex[:6]}"
        ) as client:
            await client.subscribe("fleet/alerts/#", qos=1)
            self.client = client
            ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                topic = message.topic.value
                if topic.startswith(_BARRIER):
                    self.barriers.add(topic)
                elif payload:
                    self.events.append(json.loads(payload))
                    if message.retain:
                        self.retained.add(topic)
                else:
                    self.removals.append(topic)

    async def barrier(self) -> None:
        """Return once everything the broker had for this subscriber has arrived: the broker
        sends a subscriber's messages in order, so a message published now comes after every
        retained message and every message published (and acknowledged) before it."""
        assert self.client is not None
        topic = f"{_BARRIER}/{uuid.uuid4().hex}"
        await self.client.publish(topic, b"barrier", qos=1)

        async def arrived() -> bool:
            return topic in self.barriers

        await wait_until(arrived, seconds=10, what="the barrier message")


@contextlib.asynccontextmanager
async def listening(mosquitto: Mosquitto) -> AsyncIterator[AlertListener]:
    listener = AlertListener()
    ready = asyncio.Event()
    task = asyncio.create_task(listener.listen(mosquitto.port, ready), name="alert-listener")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def clear_retained_alerts(mosquitto: Mosquitto) -> None:
    """Remove the retained alerts left on the shared broker, so no other test receives them
    (after a test and its gateway are done)."""
    async with listening(mosquitto) as cleaner:
        await cleaner.barrier()
        assert cleaner.client is not None
        for topic in cleaner.retained:
            await cleaner.client.publish(topic, b"", qos=1, retain=True)
