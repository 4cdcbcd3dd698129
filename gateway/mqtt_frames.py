"""Cutting the bytes the broker sent into MQTT 3.1.1 packets, and reading PUBLISH packets.

The gateway reads its socket in large chunks and takes the common packet, a well-formed QoS 0
or 1 PUBLISH with a UTF-8 topic, straight out of the chunk. Everything else (CONNACK, SUBACK,
PINGRESP, PUBACKs of its alerts, and any PUBLISH that is odd: QoS 2, a topic that is not UTF-8,
a body too short for its header) is left for paho to read and handle as it always has, so that
the protocol's corner cases keep paho's behaviour.
"""

from __future__ import annotations

from typing import Final, NamedTuple

_PUBLISH: Final = 0x30
_MAX_LENGTH_BYTES: Final = 4  # MQTT's "remaining length" takes at most four bytes


class Delivery(NamedTuple):
    """One PUBLISH as the broker delivered it: what the gateway decodes and later acknowledges."""

    topic: str
    payload: bytes
    qos: int
    mid: int  # 0 at QoS 0


class Cut(NamedTuple):
    """What ``cut_publishes`` found at the front of a buffer."""

    deliveries: list[Delivery]
    consumed: int  # bytes of the buffer the deliveries took
    other: int  # > 0: the next packet, complete, is for paho, and this is its length
    malformed: bool = False  # the next packet's length is not MQTT: the connection is broken


def cut_publishes(buffer: bytearray, limit: int) -> Cut:
    """Take up to ``limit`` PUBLISH packets from the front of ``buffer`` (which is not changed),
    stopping at the first packet that is incomplete or that paho must handle."""
    deliveries: list[Delivery] = []
    size = len(buffer)
    position = 0
    with memoryview(buffer) as view:
        while position < size and len(deliveries) < limit:
            framed = _frame(buffer, position, size)
            if framed is None:
                break  # the rest of the packet is still coming
            if framed is _MALFORMED:
                return Cut(deliveries, position, 0, malformed=True)
            body, end = framed
            delivery = _publish(buffer, view, buffer[position], body, end)
            if delivery is None:
                return Cut(deliveries, position, end - position)
            deliveries.append(delivery)
            position = end
    return Cut(deliveries, position, 0)


_MALFORMED: Final = (-1, -1)


def _frame(buffer: bytearray, position: int, size: int) -> tuple[int, int] | None:
    """Where the packet at ``position`` has its body and where it ends, if it is all there.
    The remaining length: 7 bits a byte, low first, the top bit saying "more"."""
    length = 0
    shift = 0
    index = position + 1
    while True:
        if index >= size:
            return None
        byte = buffer[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            return (index, index + length) if index + length <= size else None
        shift += 7
        if index - position > _MAX_LENGTH_BYTES:
            return _MALFORMED


def _publish(
    buffer: bytearray, view: memoryview, header: int, body: int, end: int
) -> Delivery | None:
    """The PUBLISH in ``buffer[body:end]``, if it is a common one (QoS 0 or 1, UTF-8 topic)."""
    qos = (header >> 1) & 0x03
    if header & 0xF0 != _PUBLISH or qos > 1 or end - body < 2:
        return None
    topic_end = body + 2 + ((buffer[body] << 8) | buffer[body + 1])
    payload_start = topic_end + 2 if qos else topic_end
    if payload_start > end:
        return None
    try:
        topic = str(view[body + 2 : topic_end], "utf-8")
    except UnicodeDecodeError:
        return None
    mid = (buffer[topic_end] << 8) | buffer[topic_end + 1] if qos else 0
    return Delivery(topic, bytes(view[payload_start:end]), qos, mid)
