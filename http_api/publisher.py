"""The one broker connection of the API: kept up by a reconnecting loop, used to publish
readings at QoS 1 and to wait for the broker's acknowledgement."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import aiomqtt

from gateway.settings import MqttAddress
from http_api.errors import BrokerUnavailableError

logger = logging.getLogger(__name__)


class Publisher:
    def __init__(self, address: MqttAddress, timeout_s: float) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._client = aiomqtt.Client(
            hostname=address.host,
            port=address.port,
            username=address.username,
            password=address.password,
            identifier=f"fleetgate-api-{uuid.uuid4().hex[:12]}",
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=30,
            timeout=timeout_s,
        )
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Stay connected until cancelled; reconnect with growing, capped, random delays."""
        attempt = 0
        while True:
            try:
                async with self._client:
                    self.connected.set()
                    attempt = 0
                    logger.info(
                        "connected to the broker at %s:%d", self._address.host, self._address.port
                    )
                    async for _ in self._client.messages:  # returns only by MqttError
                        pass
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = random.uniform(0.5, 1.0) * min(5.0, 0.1 * 2.0**attempt)
                attempt += 1
                logger.warning(
                    "broker connection in %r lost or refused: %s; retrying in %.2f s",
                    self,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Return once the broker acknowledged (PUBACK); BrokerUnavailableError otherwise."""
        if not self.connected.is_set():
            raise BrokerUnavailableError("the broker is not reachable; try again later")
        try:
            await self._client.publish(topic, payload, qos=1, timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"the broker did not acknowledge: {exc}") from None

    def __repr__(self) -> str:
        return f"<Publisher {self._address.host}:{self._address.port}>"
