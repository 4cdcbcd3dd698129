"""The one place that reaches under aiomqtt: reading the socket, and acknowledging a message
after it is committed.

aiomqtt 2.5 acknowledges a QoS 1 message as soon as it enters its queue, before the application
has stored it (aiomqtt issue #345). paho, which aiomqtt wraps, can leave the acknowledgement to
the application (``manual_ack_set``); this module switches that on and sends the acks, those
of one event-loop turn in one write. A message id is only meaningful on the connection that
delivered it, so every message is tagged with its connection's number, and acks for an older
connection are not sent: the broker redelivers those messages on the new connection, and the
primary key makes the second write a no-op.

It reads the socket itself, in large chunks, and cuts the common PUBLISH packets out of them
(``gateway.mqtt_frames``); paho reads every other packet from the same buffer, through its
``_sock_recv``, and handles it as usual. paho reads a packet in three ``recv`` calls and wraps
each message twice (its own and aiomqtt's), which was about half of the gateway's CPU.

It also bounds what waits to be taken. The broker's in-flight window should do that, but
Mosquitto 2.0.11 stops honouring ``max_inflight_messages`` once acknowledgements arrive while
messages are queued (measured: with a window of 2,000, all 20,000 queued messages were sent): a
1,000,000-message backlog then piles up in the gateway. So the gateway stops reading its socket
above a high-water mark, of messages or of payload bytes, and resumes below a low one; TCP
backpressure keeps the rest in the broker.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import struct
import time
from typing import Any, Final, cast

import aiomqtt

from gateway.broker_logins import session_login
from gateway.mqtt_frames import Delivery, cut_publishes
from gateway.settings import Settings

logger = logging.getLogger(__name__)

# Everything under fleet/, so that a device publishing to a wrong topic is dead-lettered with a
# reason rather than never seen; the gateway's own alerts (ALERTS_PREFIX) are skipped.
SUBSCRIPTIONS = ("fleet/#",)
ALERTS_PREFIX = "fleet/alerts/"
READS_PER_TURN: Final = 8  # socket reads in one event-loop turn, at most
RECV_BYTES: Final = 256 * 1024  # one socket read
_UNBOUNDED: Final = 1 << 30
_PUBACK: Final = 0x40
_PUBACK_HEAD: Final = 0x4002_0000  # a PUBACK as a big-endian 32-bit word: type, length 2, mid


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
        self._deliveries: collections.deque[Delivery] = collections.deque()
        self._queued_bytes = 0  # payload bytes in _deliveries
        self._waiter: asyncio.Future[None] | None = None  # next_message, waiting
        self._socket: Any = None  # the socket our reader reads, and its descriptor
        self._reading_fd: int | None = None
        self._buffer = bytearray()  # read from the socket, not cut into packets yet
        self._for_paho = 0  # bytes of the buffer paho may read now: the packet it handles
        self._read_error: OSError | None = None  # how the socket failed, for paho to read
        self._at_end = False  # the broker closed the connection: paho reads b""
        self._acks: list[int] = []  # message ids to acknowledge at the end of this loop turn
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
        self._loop = self.client._loop
        self._paho: Any = cast(Any, self.client._client)
        self._paho.manual_ack_set(True)
        self._paho.on_message = self._on_message  # the PUBLISH packets paho reads (odd ones)
        self._paho._sock_recv = self._recv_for_paho  # paho reads its packets from our buffer
        # paho walks its tree of per-topic callbacks for every message it reads; neither
        # aiomqtt nor the gateway ever adds one.
        self._paho._on_message_filtered = _NoTopicCallbacks()
        self._aiomqtt_socket_open: Any = self._paho.on_socket_open
        self._paho.on_socket_open = self._on_socket_open
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
        self._forget_socket()
        self._paused = False
        self._subscribed = False
        self._acks.clear()
        dropped = len(self._deliveries)
        self._deliveries.clear()
        self._queued_bytes = 0
        if dropped:
            logger.info(
                "%d messages not taken before the connection dropped will be redelivered", dropped
            )

    @property
    def waiting(self) -> int:
        """Messages received and not taken yet."""
        return len(self._deliveries)

    def lost_connection(self) -> bool:
        """True once the current connection has dropped (aiomqtt resolves this future)."""
        return bool(self.client._disconnected.done())

    async def subscribe(self) -> None:
        await self.client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._subscribed = True

    async def next_message(self) -> Delivery:
        """Wait for the next message; raises ``aiomqtt.MqttError`` when the connection drops."""
        lost = self.client._disconnected
        while not self._deliveries:
            if lost.done():
                raise aiomqtt.MqttError("Disconnected during message iteration") from (
                    None if lost.cancelled() else lost.exception()
                )
            self._waiter = self._loop.create_future()
            try:
                await asyncio.wait((self._waiter, lost), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiter = None
        return self._taken(self._deliveries.popleft())

    def take_ready(self) -> Delivery | None:
        """A message already received, without waiting (cheaper than a loop turn per message)."""
        if not self._deliveries:
            if self._paused:
                self._resume_reading()
            return None
        message = self._taken(self._deliveries.popleft())
        if (
            self._paused
            and len(self._deliveries) < self._low_water
            and self._queued_bytes < self._max_queued_bytes // 2
        ):
            self._resume_reading()
        return message

    def _taken(self, message: Delivery) -> Delivery:
        self._queued_bytes -= len(message.payload)
        return message

    def _deliver(self, deliveries: list[Delivery]) -> None:
        self._deliveries.extend(deliveries)
        self._queued_bytes += sum(len(delivery.payload) for delivery in deliveries)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """A PUBLISH paho read (not one of the common ones): kept, even on a topic that is not
        UTF-8, which becomes a dead letter."""
        try:
            topic = message.topic
        except UnicodeDecodeError:
            raw_topic = repr(getattr(message, "_topic", b""))[:200]
            logger.warning("message on an undecodable topic %s", raw_topic)
            topic = f"undecodable topic {raw_topic}"
        self._deliver([Delivery(topic, message.payload, message.qos, message.mid)])

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # aiomqtt registers its reader (from paho's thread, via the loop); ours replaces it
        # right after. Until then, aiomqtt's reader finds our buffer empty.
        self._aiomqtt_socket_open(client, userdata, sock)
        self._loop.call_soon_threadsafe(self._take_over_reading, sock)

    def _take_over_reading(self, sock: Any) -> None:
        fd = sock.fileno()
        self._forget_socket()
        self._loop.remove_reader(fd)
        self._loop.add_reader(fd, self._read)
        self._socket = sock
        self._reading_fd = fd
        self._paused = False

    def _forget_socket(self) -> None:
        self._socket = None
        self._reading_fd = None
        self._buffer.clear()
        self._for_paho = 0
        self._read_error = None
        self._at_end = False

    def _read(self) -> None:
        """Read what the socket has, up to READS_PER_TURN chunks, and cut it into messages."""
        fd = self._reading_fd
        for _ in range(READS_PER_TURN):
            if not self._cut_buffer() or fd is None or fd != self._reading_fd:
                return
            try:
                chunk = self._socket.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # paho reads it and handles the lost connection
                self._read_error = exc
                chunk = b""
            if not chunk:
                self._at_end = True
                self._paho_reads(0)
                return
            self._buffer += chunk
            self._paho._last_bytes_received = time.monotonic()  # paho's keepalive clock
        self._cut_buffer()

    def _cut_buffer(self) -> bool:
        """Take the buffer's complete packets; False if reading paused or the connection ended.
        Messages are taken without limit until subscribed: SUBACK must be read."""
        fd = self._reading_fd
        while True:
            room = self._high_water - len(self._deliveries)
            if self._subscribed and (room <= 0 or self._queued_bytes >= self._max_queued_bytes):
                self._pause_reading()
                return False
            cut = cut_publishes(self._buffer, room if self._subscribed else _UNBOUNDED)
            if cut.consumed:
                del self._buffer[: cut.consumed]
                self._deliver(cut.deliveries)
            if cut.malformed:
                self._read_error = ConnectionError("a packet from the broker is not MQTT")
                self._paho_reads(0)
                return False
            if cut.other:
                if not self._paho_reads(cut.other) or fd != self._reading_fd:
                    return False
            elif len(cut.deliveries) < room or not self._subscribed:
                return True  # what is left is a packet still coming in

    def _paho_reads(self, length: int) -> bool:
        """paho reads and handles the next ``length`` bytes of the buffer (one packet), or the
        socket's failure when there are none; False if the connection is gone."""
        self._for_paho = length
        try:
            return bool(self._paho.loop_read() == 0)
        except Exception as exc:  # as aiomqtt does: any failure means the link broke
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
            return False
        finally:
            self._for_paho = 0

    def _recv_for_paho(self, size: int) -> bytes:
        """paho's ``_sock_recv``: the bytes of the packet it was given, then "would block"."""
        if self._for_paho > 0:
            size = min(size, self._for_paho)
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._for_paho -= size
            return data
        if self._read_error is not None:
            raise self._read_error
        if self._at_end:
            return b""
        raise BlockingIOError

    def _pause_reading(self) -> None:
        if self._reading_fd is not None and not self._paused:
            self._loop.remove_reader(self._reading_fd)
            self._paused = True

    def _resume_reading(self) -> None:
        self._paused = False
        if self._reading_fd is not None and self.connected:
            self._loop.add_reader(self._reading_fd, self._read)
            self._loop.call_soon(self._read)  # the buffer may hold whole packets already

    def ack(self, mid: int, qos: int, connection: int) -> bool:
        """Acknowledge a committed message; False if its connection is gone (it will come again).
        The acks of one event-loop turn leave in one write."""
        if qos == 0:
            return True
        if not self.connected or connection != self.connection:
            return False
        if qos != 1:
            self._paho.ack(mid, qos)
            return True
        if not self._acks:
            self._loop.call_soon(self._send_acks, connection)
        self._acks.append(mid)
        return True

    def _send_acks(self, connection: int) -> None:
        mids, self._acks = self._acks, []
        if mids and self.connected and connection == self.connection:
            packet = struct.pack(f">{len(mids)}I", *[_PUBACK_HEAD | mid for mid in mids])
            self._paho._packet_queue(_PUBACK, packet, 0, 0)


class _NoTopicCallbacks:
    """Stands in for paho's topic matcher: no message has a per-topic callback."""

    def iter_match(self, _topic: str) -> tuple[()]:
        return ()
