"""Whether the broker deals shared subscriptions, asked before GATEWAY_SESSIONS above 1 relies
on them (docs/rabbitmq.md#replicas).

A broker without them (RabbitMQ before 3.13, NATS 2.9) grants ``$share/group/fleet/#`` as a
literal filter that matches nothing: every reading would be dropped, silently. They are an
MQTT 5 feature. A broker that speaks MQTT 5 and lacks them says so in its CONNACK (Shared
Subscription Available 0); one that does not speak it answers a v5 CONNECT with the 3.1.1
return code 1, or (RabbitMQ 3.10, measured) closes the connection and answers a 3.1.1 CONNECT.

The broker is asked without a login, on connections of their own (a unique client id, clean,
no session kept): any login of the gateway's is also a session's client id where the broker
makes usernames client ids (Mosquitto's ``use_username_as_clientid``), and a clean connection
with it would take that session over and discard its queue. Without a login, a broker that
speaks MQTT 5 refuses with a reason and says nothing more: taken as dealing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
import uuid
from typing import Final

from gateway.settings import Settings
from gateway.waiting import backoff_delay, sleep_unless

logger = logging.getLogger(__name__)

_ANSWER_TIMEOUT_S: Final = 10.0
_MAX_CONNACK_BYTES: Final = 65_536
_CONNACK: Final = 0x20
_DISCONNECT: Final = b"\xe0\x00"
_UNSUPPORTED_PROTOCOL_VERSION: Final = 0x84  # MQTT 5's CONNACK reason code
_SHARED_SUBSCRIPTION_AVAILABLE: Final = 0x2A
# MQTT 5 properties a CONNACK may carry, by identifier: how many bytes each value takes
# (0: a two-byte length, then that many bytes; -1: two such strings).
_PROPERTY_SIZES: Final = {
    0x11: 4, 0x12: 0, 0x13: 2, 0x15: 0, 0x16: 0, 0x1A: 0, 0x1C: 0, 0x1F: 0, 0x21: 2,
    0x22: 2, 0x24: 1, 0x25: 1, 0x26: -1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


class BrokerAnswerError(Exception):
    """The broker's answer to the probe was not a CONNACK that can be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The broker's answer: whether it deals ``$share`` (None: it did not say), and how it
    answered, for the log."""

    shared: bool | None
    answer: str


def connect_packet(client_id: str, level: int = 5) -> bytes:
    """A CONNECT without a login, clean (no session kept): MQTT 5 (``level`` 5, no properties)
    or MQTT 3.1.1 (4)."""
    identifier = client_id.encode()
    body = (
        b"\x00\x04MQTT"
        + bytes([level, 0x02])  # protocol level; clean start, no username, password or will
        + struct.pack("!H", 10)  # keep alive, seconds
        + (b"\x00" if level == 5 else b"")  # no properties
        + struct.pack("!H", len(identifier))
        + identifier
    )
    return bytes([0x10]) + variable_integer(len(body)) + body


def variable_integer(value: int) -> bytes:
    """MQTT's variable byte integer (a packet's remaining length): 7 bits a byte, low first."""
    encoded = bytearray()
    while True:
        value, digit = divmod(value, 128)
        encoded.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(encoded)


def _read_variable_integer(data: bytes, at: int) -> tuple[int, int]:
    """The integer at ``at`` and the offset after it."""
    value = 0
    for shift in range(4):
        if at >= len(data):
            break
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            return value, at
    raise BrokerAnswerError("a malformed variable byte integer")


def verdict_of(connack: bytes) -> Verdict:
    """What a CONNACK's variable header (``connack``, after the fixed header) says."""
    if len(connack) == 2:  # an MQTT 3.1.1 answer: the broker does not speak MQTT 5
        return Verdict(False, f"an MQTT 3.1.1 CONNACK, return code {connack[1]}")
    if len(connack) < 3:
        raise BrokerAnswerError(f"a CONNACK of {len(connack)} bytes")
    reason = connack[1]
    if reason == _UNSUPPORTED_PROTOCOL_VERSION:
        return Verdict(False, "an MQTT 5 CONNACK, reason 0x84 (unsupported protocol version)")
    if reason != 0:  # refused (no login): it speaks MQTT 5, and says nothing more
        return Verdict(None, f"an MQTT 5 CONNACK, reason 0x{reason:02x}")
    available = _byte_property(connack, 2, _SHARED_SUBSCRIPTION_AVAILABLE)
    if available is None:
        return Verdict(True, "an MQTT 5 CONNACK (shared subscriptions available by default)")
    return Verdict(available == 1, f"Shared Subscription Available {available}")


def _byte_property(connack: bytes, at: int, wanted: int) -> int | None:
    """The value of the one-byte property ``wanted`` among the properties at ``at``."""
    length, at = _read_variable_integer(connack, at)
    end = at + length
    if end > len(connack):
        raise BrokerAnswerError("CONNACK properties longer than the packet")
    try:
        while at < end:
            identifier, at = connack[at], at + 1
            size = _PROPERTY_SIZES.get(identifier)
            if size is None:
                raise BrokerAnswerError(f"an unknown CONNACK property 0x{identifier:02x}")
            if identifier == wanted:
                return connack[at]
            if size > 0:
                at += size
            else:  # a string or binary value (two-byte length first), or two (a user property)
                for _ in range(2 if size < 0 else 1):
                    at += 2 + struct.unpack_from("!H", connack, at)[0]
    except (IndexError, struct.error):
        at = end + 1
    if at != end:
        raise BrokerAnswerError("CONNACK properties cut short")
    return None


async def ask_broker(host: str, port: int, client_id: str) -> Verdict:
    """Connect without a login, read the broker's answer to an MQTT 5 CONNECT, and leave. A
    broker that closes the connection instead (RabbitMQ 3.10 does: it parses the CONNECT as
    3.1.1 and fails on its properties) is asked in MQTT 3.1.1: a CONNACK to that means it
    speaks 3.1.1 and not 5. Raises OSError or TimeoutError if it cannot be reached,
    BrokerAnswerError if it answers neither with a CONNACK."""
    probe = f"{client_id}-probe-{uuid.uuid4().hex[:8]}"
    connack = await _connack(host, port, connect_packet(probe, 5))
    if connack is not None:
        return verdict_of(connack)
    connack = await _connack(host, port, connect_packet(probe, 4))
    if connack is None or len(connack) != 2:
        raise BrokerAnswerError("closed the connection without a CONNACK, to MQTT 5 and 3.1.1")
    answer = f"a closed connection, and a 3.1.1 CONNECT with return code {connack[1]}"
    return Verdict(False, answer)


async def _connack(host: str, port: int, connect: bytes) -> bytes | None:
    """Send ``connect`` on a connection of its own; the CONNACK's variable header, or None if
    the broker closed the connection without one. Disconnects if it accepted."""
    async with asyncio.timeout(_ANSWER_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(connect)
            await writer.drain()
            try:
                kind = (await reader.readexactly(1))[0]
                length = 0
                for shift in range(0, 28, 7):
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                if length > _MAX_CONNACK_BYTES:
                    raise BrokerAnswerError(f"a packet of {length} bytes instead of a CONNACK")
                connack = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return None
            if kind >> 4 != _CONNACK >> 4:
                raise BrokerAnswerError(f"a packet of type {kind >> 4} instead of a CONNACK")
            if len(connack) >= 2 and connack[1] == 0:  # accepted: leave cleanly
                writer.write(_DISCONNECT)
                await writer.drain()
            return connack
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def shared_subscriptions_usable(settings: Settings, stop: asyncio.Event) -> bool:
    """True if one session is configured, or the broker deals shared subscriptions (or does
    not say it does not); False, with an error logged naming GATEWAY_SESSIONS and the broker,
    if it does not, or if ``stop`` is set first. Waits for an unreachable broker."""
    sessions = settings.gateway_sessions
    if sessions == 1:
        return True
    broker = f"mqtt://{settings.mqtt.host}:{settings.mqtt.port}"
    attempt = 0
    while not stop.is_set():
        try:
            verdict = await ask_broker(settings.mqtt.host, settings.mqtt.port, settings.client_id)
        except (OSError, TimeoutError, BrokerAnswerError) as exc:
            delay = backoff_delay(attempt, settings.retry_max_delay_s)
            logger.warning(
                "GATEWAY_SESSIONS=%d: cannot ask the broker at %s whether it deals shared "
                "subscriptions (%s); retrying in %.1f s",
                sessions,
                broker,
                str(exc) or type(exc).__name__,
                delay,
            )
            attempt += 1
            await sleep_unless(stop, delay)
            continue
        if verdict.shared is False:
            logger.error(
                "GATEWAY_SESSIONS=%d needs a broker that deals shared subscriptions ($share), "
                "and the broker at %s does not (it answered an MQTT 5 CONNECT with %s): it "
                "would grant $share/.../fleet/# as a filter that matches nothing, and every "
                "reading would be dropped. Refusing to start: set GATEWAY_SESSIONS=1 on this "
                "broker (further replicas are then standbys; docs/rabbitmq.md#replicas)",
                sessions,
                broker,
                verdict.answer,
            )
            return False
        logger.info(
            "GATEWAY_SESSIONS=%d: the broker at %s answers in MQTT 5 (%s), so it is taken to "
            "deal shared subscriptions",
            sessions,
            broker,
            verdict.answer,
        )
        return True
    return False
