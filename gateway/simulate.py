"""``python -m gateway.simulate``: publish a simulated fleet's readings to the broker at QoS 1;
with ``--register DATABASE_URL``, first register its devices with their true nominal voltage.

Publishing uses paho directly, one thread, with a bounded window of unacknowledged messages
(paho reuses message ids and stalls past 65,535 outstanding).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from gateway.registry import register
from gateway.schema import apply_schema
from gateway.settings import MqttAddress, SettingsError
from gateway.simulated_fleet import Fleet, FleetProfile, Message

DEFAULT_WINDOW = 1000
OLDEST_START = timedelta(days=30)  # the gateway refuses readings older than 31 days


class PublishError(Exception):
    """The broker could not be reached or did not accept the connection."""


@dataclasses.dataclass(slots=True)
class Stats:
    """What a run did; ``acked`` counts PUBACKs received from the broker."""

    sent: int = 0
    acked: int = 0
    readings: int = 0
    errors: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"sent {self.sent:,}  acked {self.acked:,}  readings {self.readings:,}  "
            f"rate {rate:,.0f} msg/s  errors {self.errors}  ({self.elapsed_s:.1f} s)"
        )


class Publisher:
    """A paho client on its own socket, serviced by hand between publishes; at most ``window``
    QoS 1 messages unacknowledged. Messages published while disconnected are kept by paho and
    sent again after the reconnect."""

    def __init__(self, address: MqttAddress, client_id: str, window: int = DEFAULT_WINDOW):
        self.address = address
        self.window = window
        self.stats = Stats()
        self._connected = False
        self._closing = False
        self._refused: str | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if address.username:
            self._client.username_pw_set(address.username, address.password)
        self._client.max_inflight_messages_set(window)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            self._connected = True

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        if self._connected and not self._closing:
            self.stats.errors += 1
        self._connected = False

    def _on_publish(self, _c: Any, _u: Any, _mid: int, _reason: Any, _p: Any) -> None:
        self.stats.acked += 1

    def connect(self, timeout_s: float = 10.0) -> None:
        try:
            self._client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            where = f"{self.address.host}:{self.address.port}"
            raise PublishError(f"cannot reach {where}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while not self._connected:
            if self._refused or time.monotonic() > deadline:
                raise PublishError(f"broker did not accept the connection: {self._refused}")
            self._client.loop(0.05)

    def publish(self, message: Message) -> None:
        """Publish at QoS 1, first waiting while the window is full."""
        while self.outstanding >= self.window:
            self.service(0.05)
        self._client.publish(message.topic, message.payload, qos=1)  # kept if disconnected
        self.stats.sent += 1
        self.stats.readings += message.readings
        if self.stats.sent % 64 == 0:
            self.service(0.0)

    @property
    def outstanding(self) -> int:
        return self.stats.sent - self.stats.acked

    def service(self, timeout_s: float) -> None:
        """Read PUBACKs and keep the connection alive; reconnect if it dropped."""
        if self._client.loop(timeout_s) == mqtt.MQTT_ERR_SUCCESS:
            return
        time.sleep(min(0.5, max(timeout_s, 0.05)))
        try:
            self._client.reconnect()
        except OSError:
            self.stats.errors += 1

    def drain(self, timeout_s: float) -> bool:
        """Wait for the outstanding acknowledgements; True if all came."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding > 0 and time.monotonic() < deadline:
            self.service(0.05)
        return self.outstanding == 0

    def disconnect(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop(0.1)


@dataclasses.dataclass(frozen=True, slots=True)
class Pace:
    """When to publish: at ``speed`` times simulated time, at ``rate`` messages/s, or as fast
    as the window allows (both None)."""

    speed: float | None = 1.0
    rate: float | None = None

    def due_at(self, started: float, sim_start: datetime, number: int, message: Message) -> float:
        if self.rate:
            return started + number / self.rate
        if self.speed:
            return started + (message.at - sim_start).total_seconds() / self.speed
        return started


def live_stream(fleet: Fleet) -> Iterator[Message]:
    """Readings stamped with the time they are handed to the publisher (latency probes)."""
    while True:
        for index in range(len(fleet.chargers)):
            yield from fleet.report(index, datetime.now(UTC))


def publish_messages(
    publisher: Publisher,
    messages: Iterable[Message],
    pace: Pace,
    *,
    sim_start: datetime,
    count: int | None = None,
    duration_s: float | None = None,
    progress: TextIO | None = None,
    stop: list[bool] | None = None,
) -> Stats:
    """Publish until ``count`` messages, ``duration_s`` seconds, the end of ``messages`` or
    ``stop[0]``; then wait (up to 30 s) for the outstanding acknowledgements."""
    stats = publisher.stats
    started = time.monotonic()
    next_progress = started + 1.0
    for number, message in enumerate(messages):
        if (count is not None and number >= count) or (stop and stop[0]):
            break
        now = time.monotonic()
        due = pace.due_at(started, sim_start, number, message)
        if duration_s is not None and max(now, due) - started >= duration_s:
            break  # its turn comes after the end
        while now < due:
            publisher.service(min(due - now, 0.05))
            now = time.monotonic()
        publisher.publish(message)
        if progress and now >= next_progress:
            stats.elapsed_s = now - started
            _show(progress, stats)
            next_progress = now + 1.0
    publisher.drain(30.0)
    stats.elapsed_s = time.monotonic() - started
    stats.errors += publisher.outstanding  # never acknowledged
    return stats


def _show(progress: TextIO, stats: Stats) -> None:
    end = "\r" if progress.isatty() else "\n"
    progress.write(stats.line() + end)
    progress.flush()


def default_start(args: argparse.Namespace, now: datetime) -> datetime:
    """Real time starts now; accelerated runs start in the past so that they end about now
    (the gateway refuses readings from the future), at most 30 days back."""
    if args.start:
        return datetime.fromisoformat(args.start.replace("Z", "+00:00")).astimezone(UTC)
    if args.speed == 1.0 and not args.rate and not args.flood:
        return now
    profile = FleetProfile(devices=args.devices, interval_s=args.interval, array=args.array)
    if args.count is not None:
        span = profile.time_for(args.count)
    elif args.duration is not None and args.rate:
        span = profile.time_for(int(args.duration * args.rate))
    elif args.duration is not None and not args.flood:
        span = timedelta(seconds=args.duration * args.speed)
    else:
        span = OLDEST_START
    return now - min(span, OLDEST_START)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.simulate",
        description="Publish simulated EV-fleet telemetry (meters MTR-xxxx and the vehicles "
        "EV-xxxx they charge) to fleet/meter/{id} and fleet/vehicle/{id} at QoS 1.",
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--mqtt-url",
        default=os.environ.get("MQTT_URL", "mqtt://localhost:1883"),
        help="broker, mqtt://[user:pass@]host[:port] (default: MQTT_URL, else mqtt://localhost:1883)",
    )
    add("--devices", type=int, default=100, help="chargers: one meter and one vehicle each")
    add("--first-device", type=int, default=1, help="number of the first device (MTR-0001)")
    add("--interval", type=float, default=60.0, help="simulated seconds between readings")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated time runs this many times faster than real time",
    )
    pace.add_argument("--rate", type=float, help="publish this many messages/s instead")
    pace.add_argument("--flood", action="store_true", help="publish as fast as acks allow")
    add("--duration", type=float, help="stop after this many seconds of wall time")
    add("--count", type=int, help="stop after this many messages")
    add("--array", type=int, default=1, help="readings per message (N>1: a JSON array)")
    add(
        "--start",
        help="simulated start time, RFC 3339 (default: now in real time; accelerated "
        "runs start in the past so that they end about now)",
    )
    add(
        "--live-timestamps",
        action="store_true",
        help="stamp readings with the publish time instead of simulated time (latency probes)",
    )
    add("--faulty-share", type=float, default=0.05, help="chargers below 85%% efficiency")
    add("--overheat-share", type=float, default=0.02, help="batteries going above 55 C")
    add("--silent-share", type=float, default=0.02, help="meters that stop reporting")
    add("--duplicate-share", type=float, default=0.001, help="messages sent twice")
    add("--late-share", type=float, default=0.001, help="messages sent out of order, later")
    add("--malformed-share", type=float, default=0.001, help="messages with a broken payload")
    add("--seed", type=int, help="random seed, for a repeatable fleet")
    add("--window", type=int, default=DEFAULT_WINDOW, help="unacknowledged messages at most")
    add(
        "--client-id",
        default=f"fleetgate-sim-{uuid.uuid4().hex[:8]}",
        help="MQTT client id (default: fleetgate-sim-<random>)",
    )
    add("--quiet", action="store_true", help="no progress line on stderr")
    add(
        "--register",
        metavar="DATABASE_URL",
        help="first register the fleet's meters (with their nominal voltage and phases) and "
        "vehicles (battery capacity) in this database, as a bulk import does",
    )
    return parser


def register_fleet(database_url: str, fleet: Fleet) -> Counter[str]:
    """Register (or update) the fleet's devices in one transaction, as POST /v1/devices/import
    does, so that each meter is judged against its own nominal voltage: how many were created,
    updated and already so. The secrets issued to new devices are not kept (rotate one to
    connect it with its own login)."""

    async def run() -> list[str]:
        await apply_schema(database_url)
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return [done.outcome for done in await register(conn, fleet.devices())]

    return Counter(asyncio.run(run()))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices < 1 or args.array < 1 or args.window < 1 or not args.speed > 0:
        parser.error("--devices, --array, --window and --speed must be positive")
    try:
        address = MqttAddress.parse(args.mqtt_url)
    except SettingsError as exc:
        parser.error(str(exc))
    profile = FleetProfile(
        devices=args.devices,
        first_device=args.first_device,
        interval_s=args.interval,
        array=args.array,
        faulty_share=args.faulty_share,
        overheat_share=args.overheat_share,
        silent_share=args.silent_share,
        duplicate_share=args.duplicate_share,
        late_share=args.late_share,
        malformed_share=args.malformed_share,
        seed=args.seed,
    )
    start = default_start(args, datetime.now(UTC).replace(microsecond=0))
    fleet = Fleet(profile, start)
    stream = live_stream(fleet) if args.live_timestamps else fleet.stream()
    pace = Pace(speed=None if args.flood or args.rate else args.speed, rate=args.rate)
    stop = [False]

    def request_stop(_signum: int, _frame: object) -> None:
        stop[0] = True

    if args.register:
        try:
            done = register_fleet(args.register, fleet)
        except psycopg.OperationalError as exc:
            print(f"fleetgate-sim: cannot register the fleet: {' '.join(str(exc).split())}",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(
            f"registered {done.total()} devices: {done['created']} created, "
            f"{done['updated']} updated, {done['unchanged']} unchanged",
            file=sys.stderr,
        )
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    publisher = Publisher(address, args.client_id, args.window)
    try:
        publisher.connect()
    except PublishError as exc:
        print(f"fleetgate-sim: {exc}", file=sys.stderr)
        return 1
    progress = None if args.quiet else sys.stderr
    try:
        stats = publish_messages(
            publisher,
            stream,
            pace,
            sim_start=start,
            count=args.count,
            duration_s=args.duration,
            progress=progress,
            stop=stop,
        )
    finally:
        publisher.disconnect()
    print(stats.line(), file=sys.stderr)
    return 0 if stats.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
