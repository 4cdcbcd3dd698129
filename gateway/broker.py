"""The one place that reaches under aiomqtt: acknowledging a message after it is committed.

aiomqtt 2.5 acknowledges a QoS 1 message as soon as it enters its queue, before the application
has stored it (aiomqtt issue #345). paho, which aiomqtt wraps, can leave the acknowledgement to
the application (``manual_ack_set``); this module switches that on and sends the acks. A message
id is only meaningful on the connection that delivered it, so every message is tagged with its
connection's number, and acks for an older connection are not sent: the broker redelivers those
messages on the new connection, and the primary key makes the second write a no-op.

It also bounds what waits in aiomqtt's unbounded queue. The broker's in-flight window should do
that, but Mosquitto 2.0.11 stops honouring ``max_inflight_messages`` once acknowledgements
arrive while messages are queued (measured: with a window of 2,000, all 20,000 queued messages
were sent): a 1,000,000-message backlog then piles up in the gateway. So the gateway stops
reading its socket above a high-water mark, of messages or of payload bytes, and resumes below
a low one; TCP backpressure keeps the rest in the broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import aiomqtt

from gateway.broker_logins import session_login
from gateway.settings import Settings

logger = logging.getLogger(__name__)

# Everything under fleet/, so that a device publishing to a wrong topic is dead-lettered with a
# reason rather than never seen; the gateway's own alerts (ALERTS_PREFIX) are skipped.
SUBSCRIPTIONS = ("fleet/#",)
ALERTS_PREFIX = "fleet/alerts/"
READS_PER_TURN = 64  # packets read in one event-loop turn, at most


def session_subscriptions(
    client_id: str, sessions: int, secret: str | None = None
) -> tuple[str, ...]:
    """One session: ``fleet/#``. Several (replicas): each a member of one shared subscription,
    so that the broker deals each message to one session. Mosquitto's acl_file lets any login
    subscribe to anything, and a member whose login may not read still takes its turn (the
    message is dropped): the group's name is derived from the gateway's secret, so that no
    other login can name it and swallow a share."""
    if sessions == 1:
        return SUBSCRIPTIONS
    group = client_id
    if secret:
        group += "-" + hashlib.sha256(f"{client_id}\0{secret}".encode()).hexdigest()[:16]
    return tuple(f"$share/{group}/{topic}" for topic in SUBSCRIPTIONS)


def settle_disconnection(client: aiomqtt.Client) -> None:
    """Mark why ``client``'s connection dropped as seen. aiomqtt keeps it in a future that is
    awaited only by the message iterator; when the drop surfaces elsewhere (a publish, our own
    reader), nothing retrieves it and asyncio logs "Future exception was never retrieved" with
    a traceback. The caller has logged the loss already."""
    lost = client._disconnected
    if lost.done() and not lost.cancelled():
        lost.exception()


class Broker:
    """An aiomqtt client on a persistent session whose messages are acknowledged by hand."""

    def __init__(
        self, settings: Settings, max_queued_bytes: int, session: int = 0, sessions: int = 1
    ) -> None:
        self.session = session
        self.identifier = session_login(settings.client_id, session, sessions)
        self._subscriptions = session_subscriptions(
            settings.client_id, sessions, settings.mqtt.password
        )
        username = settings.mqtt.username
        self._high_water = 4 * settings.batch_size  # above the in-flight window when it holds
        self._low_water = 2 * settings.batch_size
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0  # payload bytes in aiomqtt's queue
        self._received = 0  # messages paho has handed us, ever: did a read bring one?
        self._reading_fd: int | None = None  # the socket our reader is registered on
        self._paused = False
        self._subscribed = False
        self.client = aiomqtt.Client(
            hostname=settings.mqtt.host,
            port=settings.mqtt.port,
            username=None if username is None else session_login(username, session, sessions),
            password=settings.mqtt.password,
            identifier=self.identifier,
            clean_session=False,  # the broker keeps our subscription and queue while we are away
            protocol=aiomqtt.ProtocolVersion.V311,  # paho's MQTT 5 path is several times slower
            keepalive=30,
        )
        self._paho: Any = self.client._client
        self._paho.manual_ack_set(True)
        self._aiomqtt_on_message: Any = self._paho.on_message
        self._paho.on_message = self._on_message
        # paho walks its tree of per-topic callbacks for every message (5-9 % of the gateway's
        # CPU in a profile); neither aiomqtt nor the gateway ever adds one.
        self._paho._on_message_filtered = _NoTopicCallbacks()  # type: ignore[assignment]
        self._aiomqtt_socket_open: Any = self._paho.on_socket_open
        self._paho.on_socket_open = self._on_socket_open
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
        settle_disconnection(self.client)
        self._reading_fd = None
        self._paused = False
        self._subscribed = False
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        self._queued_bytes = 0
        if dropped:
            logger.info(
                "%d messages not taken before the connection dropped will be redelivered", dropped
            )

    def lost_connection(self) -> bool:
        """True once the current connection has dropped (aiomqtt resolves this future)."""
        return bool(self.client._disconnected.done())

    async def subscribe(self) -> None:
        await self.client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._subscribed = True

    async def next_message(self) -> aiomqtt.Message:
        """Wait for the next message; raises ``aiomqtt.MqttError`` when the connection drops."""
        iterator = self.client.messages.__aiter__()
        return self._taken(await iterator.__anext__())

    def take_ready(self) -> aiomqtt.Message | None:
        """A message already received, without waiting (cheaper than a loop turn per message)."""
        if self._queue.empty():
            if self._paused:
                self._resume_reading()
            return None
        message = self._taken(self._queue.get_nowait())
        if (
            self._paused
            and self._queue.qsize() < self._low_water
            and self._queued_bytes < self._max_queued_bytes // 2
        ):
            self._resume_reading()
        return message

    def _taken(self, message: aiomqtt.Message) -> aiomqtt.Message:
        self._queued_bytes -= _size(message.payload)
        return message

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._received += 1
        self._queued_bytes += _size(message.payload)
        try:
            self._aiomqtt_on_message(client, userdata, message)
        except Exception as exc:  # a topic aiomqtt cannot represent: keep it as a dead letter
            raw_topic = repr(getattr(message, "_topic", b""))[:200]
            logger.warning("message on an undecodable topic %s: %s", raw_topic, exc)
            self._queue.put_nowait(
                aiomqtt.Message(
                    f"undecodable topic {raw_topic}".replace("+", "?").replace("#", "?"),
                    message.payload,
                    message.qos,
                    message.retain,
                    message.mid,
                    None,
                )
            )

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # aiomqtt registers its reader (from paho's thread, via the loop); ours replaces it
        # right after, so that reading can pause.
        self._aiomqtt_socket_open(client, userdata, sock)
        loop = self.client._loop
        loop.call_soon_threadsafe(self._take_over_reading, sock.fileno())

    def _take_over_reading(self, fd: int) -> None:
        loop = self.client._loop
        loop.remove_reader(fd)
        loop.add_reader(fd, self._read)
        self._reading_fd = fd
        self._paused = False

    def _read(self) -> None:
        """aiomqtt's reader, plus the pause: paho reads and queues until the high-water mark.
        paho's ``loop_read`` reads one packet, whatever ``max_packets`` says, so this calls it
        until a call brings no message (the socket is empty, or it read another kind of
        packet), at most READS_PER_TURN times: one event-loop turn per message cost ~10 % of
        the gateway's CPU."""
        # Not before SUBACK is read: the consumer takes messages only once subscribed.
        fd = self._reading_fd
        for _ in range(READS_PER_TURN):
            if (
                self._subscribed
                and fd is not None
                and (
                    self._queue.qsize() >= self._high_water
                    or self._queued_bytes >= self._max_queued_bytes
                )
            ):
                self.client._loop.remove_reader(fd)
                self._paused = True
                return
            received = self._received
            try:
                if self._paho.loop_read() != 0 or fd != self._reading_fd:
                    return  # the connection dropped (paho has handled it) or was replaced
            except Exception as exc:  # as aiomqtt does: any failure means the link broke
                disconnected = self.client._disconnected
                if not disconnected.done():
                    disconnected.set_exception(exc)
                return
            if self._received == received:
                return

    def _resume_reading(self) -> None:
        self._paused = False
        if self._reading_fd is not None and self.connected:
            self.client._loop.add_reader(self._reading_fd, self._read)

    def ack(self, mid: int, qos: int, connection: int) -> bool:
        """Acknowledge a committed message; False if its connection is gone (it will come again)."""
        if qos == 0:
            return True
        if not self.connected or connection != self.connection:
            return False
        self._paho.ack(mid, qos)
        return True


class _NoTopicCallbacks:
    """Stands in for paho's topic matcher: no message has a per-topic callback."""

    def iter_match(self, _topic: str) -> tuple[()]:
        return ()


def _size(payload: object) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray) else 0
