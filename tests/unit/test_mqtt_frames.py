"""Cutting PUBLISH packets out of what the socket delivered, however it is split."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from gateway.mqtt_frames import Cut, Delivery, cut_publishes
from gateway.shared_subscriptions import variable_integer


def publish(topic: bytes, payload: bytes, qos: int, mid: int, retain: bool = False) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + (struct.pack(">H", mid) if qos else b"")
    body += payload
    return bytes([0x30 | qos << 1 | retain]) + variable_integer(len(body)) + body


deliveries = st.lists(
    st.builds(
        Delivery,
        topic=st.text(min_size=1, max_size=80),
        payload=st.binary(max_size=400),
        qos=st.sampled_from([0, 1]),
        mid=st.integers(1, 65535),
    ),
    max_size=30,
)


def stream_of(sent: list[Delivery]) -> bytes:
    return b"".join(publish(d.topic.encode(), d.payload, d.qos, d.mid) for d in sent)


def cut_all(chunks: list[bytes], limit: int = 1_000) -> tuple[list[Delivery], bytearray]:
    """Feed chunks as a socket would, cutting after each, as the gateway's reader does."""
    buffer = bytearray()
    taken: list[Delivery] = []
    for chunk in chunks:
        buffer += chunk
        while True:
            cut = cut_publishes(buffer, limit)
            assert cut.other == 0
            assert not cut.malformed
            del buffer[: cut.consumed]
            taken += cut.deliveries
            if len(cut.deliveries) < limit:
                break
    return taken, buffer


@given(deliveries, st.lists(st.integers(1, 500), max_size=40))
def test_every_message_comes_out_whole_and_in_order_however_the_bytes_arrive(
    sent: list[Delivery], cuts: list[int]
) -> None:
    stream = stream_of(sent)
    chunks, start = [], 0
    for size in cuts:
        chunks.append(stream[start : start + size])
        start += size
    chunks.append(stream[start:])
    taken, left = cut_all(chunks)
    assert taken == [d if d.qos else d._replace(mid=0) for d in sent]
    assert not left


@given(deliveries, st.integers(1, 5))
def test_no_more_than_the_limit_is_taken_at_once(sent: list[Delivery], limit: int) -> None:
    taken, left = cut_all([stream_of(sent)], limit)
    assert len(taken) == len(sent)
    assert not left
    assert len(cut_publishes(bytearray(stream_of(sent)), limit).deliveries) == min(limit, len(sent))


def test_a_packet_that_is_not_a_common_publish_is_left_whole_for_paho() -> None:
    pingresp, suback = b"\xd0\x00", b"\x90\x03\x00\x07\x01"
    odd = [
        pingresp,
        suback,
        publish(b"fleet/meter/m1", b"{}", qos=2, mid=9),  # QoS 2: paho's handshake
        publish(b"fleet/\xff\xfe", b"{}", qos=1, mid=9),  # not UTF-8: paho's dead letter
        b"\x32\x03\x00\x05a",  # a topic longer than the packet
        b"\x32\x01\x00",  # no room for a topic length
    ]
    first = publish(b"fleet/meter/m1", b'{"v": 1}', qos=1, mid=7)
    for packet in odd:
        cut = cut_publishes(bytearray(first + packet + first), 100)
        assert cut == Cut([Delivery("fleet/meter/m1", b'{"v": 1}', 1, 7)], len(first), len(packet))


def test_a_length_longer_than_mqtt_allows_marks_the_connection_broken() -> None:
    assert cut_publishes(bytearray(b"\x32\xff\xff\xff\xff\x01"), 10).malformed
    # four length bytes are the most MQTT allows, and 268,435,455 the longest length
    assert cut_publishes(bytearray(b"\x32\xff\xff\xff\x7f"), 10) == Cut([], 0, 0)


@given(st.binary(max_size=300), st.integers(1, 50))
def test_any_bytes_at_all_are_cut_without_error_and_never_past_the_buffer(
    junk: bytes, limit: int
) -> None:
    cut = cut_publishes(bytearray(junk), limit)
    assert 0 <= cut.consumed <= len(junk)
    assert cut.consumed + cut.other <= len(junk)
    assert len(cut.deliveries) <= limit
