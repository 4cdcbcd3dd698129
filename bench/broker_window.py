"""``python -m bench.broker_window``: does the broker keep to max_inflight_messages?

A subscriber that acknowledges by hand (as the gateway does) counts what Mosquitto sends it
while it stops acknowledging: (1) a live stream, none acknowledged, (2) the same with the
first 10 acknowledged in order, (3) resuming a persistent session with a backlog, none
acknowledged, (4) the same with the first 10 acknowledged in order.
With flow control working, each count is max_inflight_messages (2000 in fleetgate.conf).
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.services import Mosquitto

BACKLOG = 20_000


class CountingSubscriber:
    def __init__(self, port: int, client_id: str, ack_first: int = 0):
        self.received = 0
        self.ack_first = ack_first
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.manual_ack_set(True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("fleet/#", qos=1)

    def _on_message(self, client: Any, _userdata: Any, message: Any) -> None:
        self.received += 1
        if self.received <= self.ack_first:
            client.ack(message.mid, message.qos)

    def run_for(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.client.loop(0.05)
        return self.received

    def leave(self) -> None:
        self.client.disconnect()
        self.client.loop(0.1)


def publish(port: int, count: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish("fleet/meter/X", b"x" * 100, qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def main() -> int:
    broker = Mosquitto()
    try:
        live = CountingSubscriber(broker.port, "window-live")
        live.run_for(0.5)
        publish(broker.port, BACKLOG)
        print(f"(1) live stream of {BACKLOG:,}, none acked: {live.run_for(3):,} received")
        live.leave()
        acking = CountingSubscriber(broker.port, "window-live-acking", ack_first=10)
        acking.run_for(0.5)
        publish(broker.port, BACKLOG)
        print(
            f"(2) live stream of {BACKLOG:,}, first 10 acked in order: "
            f"{acking.run_for(3):,} received"
        )
        acking.leave()
        for case, ack_first in (("(3)", 0), ("(4)", 10)):
            name = f"window-resume-{ack_first}"
            CountingSubscriber(broker.port, name).leave()  # the session exists, then offline
            publish(broker.port, BACKLOG)
            resumed = CountingSubscriber(broker.port, name, ack_first)
            print(
                f"{case} session resumed with {BACKLOG:,} queued, first {ack_first} acked in "
                f"order: {resumed.run_for(3):,} received"
            )
            resumed.leave()
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
