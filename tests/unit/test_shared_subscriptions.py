"""Reading a broker's CONNACK for whether it deals shared subscriptions (gateway replicas)."""

from __future__ import annotations

import struct

import pytest

from gateway.shared_subscriptions import BrokerAnswerError, connect_packet, verdict_of


def string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def connack5(reason: int, properties: bytes = b"") -> bytes:
    return bytes([0, reason, len(properties)]) + properties


def test_a_broker_that_answers_in_mqtt_3_deals_none() -> None:
    assert verdict_of(b"\x00\x01").shared is False  # unacceptable protocol version


def test_a_broker_that_says_it_has_none_is_believed_after_other_properties() -> None:
    properties = (
        b"\x21\x07\xd0"  # receive maximum 2000
        + b"\x12"
        + string("assigned-id")
        + b"\x26"
        + string("key")
        + string("value")  # a user property
        + b"\x2a\x00"  # shared subscription available: 0
    )
    verdict = verdict_of(connack5(0, properties))
    assert verdict.shared is False
    assert "Shared Subscription Available 0" in verdict.answer


def test_an_accepting_mqtt_5_broker_deals_them_unless_it_says_otherwise() -> None:
    assert verdict_of(connack5(0)).shared is True
    assert verdict_of(connack5(0, b"\x2a\x01")).shared is True
    assert verdict_of(connack5(0x84)).shared is False  # unsupported protocol version
    assert verdict_of(connack5(0x87)).shared is None  # not authorised: it says nothing more


@pytest.mark.parametrize(
    "connack",
    [
        b"\x00",  # too short
        b"\x00\x00\x02\x99\x00",  # an unknown property
        b"\x00\x00\x05\x1f\x00\x09ab",  # a reason string longer than the packet
        b"\x00\x00\x01\x2a",  # a property without its value
    ],
)
def test_an_unreadable_connack_is_an_error_not_a_verdict(connack: bytes) -> None:
    with pytest.raises(BrokerAnswerError):
        verdict_of(connack)


def test_the_probe_connects_clean_without_a_login() -> None:
    packet = connect_packet("fleetgate-gateway-probe-1")
    assert packet[0] == 0x10
    assert packet[2:9] == b"\x00\x04MQTT\x05"
    assert packet[9] == 0x02  # clean start; no username, password or will flag
    assert packet.endswith(string("fleetgate-gateway-probe-1"))
    assert connect_packet("x", 4)[8:10] == b"\x04\x02"
