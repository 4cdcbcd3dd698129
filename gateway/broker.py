"""The one place that reaches under aiomqtt: acknowledging a message after it is committed.

aiomqtt 2.5 acknowledges a QoS 1 message as soon as it enters its queue, before the application
has stored it (aiomqtt issue #345). paho, which aiomqtt wraps, can leave the acknowledgement to
the application (``manual_ack_set``); this module switches that on and sends the acks. A message
id is only meaningful on the connection that delivered it, so every message is tagged with its
connection's number, and acks for an older connection are not sent: the broker redelivers those
messages on the new connection, and the primary key makes the second write a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiomqtt

from gateway.settings import Settings

logger = logging.getLogger(__name__)

# Everything under fleet/, so that a device publishing to a wrong topic is dead-lettered with a
# reason rather than never seen; the gateway's own alerts (ALERTS_PREFIX) are skipped.
SUBSCRIPTIONS = ("fleet/#",)
ALERTS_PREFIX = "fleet/alerts/"


class Broker:
    """An aiomqtt client on a persistent session whose messages are acknowledged by hand."""

    def __init__(self, settings: Settings) -> None:
        self.client = aiomqtt.Client(
            hostname=settings.mqtt.host,
            port=settings.mqtt.port,
            username=settings.mqtt.username,
            password=settings.mqtt.password,
            identifier=settings.client_id,
            clean_session=False,  # the broker keeps our subscription and queue while we are away
            protocol=aiomqtt.ProtocolVersion.V311,  # paho's MQTT 5 path is several times slower
            keepalive=30,
        )
        self._paho: Any = self.client._client
        self._paho.manual_ack_set(True)
        self._queue: asyncio.Queue[aiomqtt.Message] = self.client._queue
        self.connection = 0  # incremented at every (re)connect
        self.connected = False

    def connected_to(self, connection: int) -> None:
        """Call right after each connect, before taking messages: they belong to ``connection``.
        (The broker redelivers unacknowledged messages right after CONNACK, so the local queue
        may already hold some of this connection's messages: they must be kept.)"""
        self.connection = connection
        self.connected = True

    def disconnected(self) -> None:
        """Call once a connection is gone: messages it delivered that were not taken yet are
        forgotten (never acknowledged, so the broker sends them again on the next connection)."""
        self.connected = False
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        if dropped:
            logger.info(
                "%d messages not taken before the connection dropped will be redelivered", dropped
            )

    def lost_connection(self) -> bool:
        """True once the current connection has dropped (aiomqtt resolves this future)."""
        return bool(self.client._disconnected.done())

    async def subscribe(self) -> None:
        await self.client.subscribe([(topic, 1) for topic in SUBSCRIPTIONS])

    async def next_message(self) -> aiomqtt.Message:
        """Wait for the next message; raises ``aiomqtt.MqttError`` when the connection drops."""
        iterator = self.client.messages.__aiter__()
        return await iterator.__anext__()

    def take_ready(self, limit: int) -> list[aiomqtt.Message]:
        """Messages already received, without waiting (cheaper than a loop turn per message)."""
        taken: list[aiomqtt.Message] = []
        while len(taken) < limit and not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    def ack(self, mid: int, qos: int, connection: int) -> bool:
        """Acknowledge a committed message; False if its connection is gone (it will come again)."""
        if qos == 0:
            return True
        if not self.connected or connection != self.connection:
            return False
        self._paho.ack(mid, qos)
        return True
