"""``python -m fleetgate_tools.simulate`` (``fleetgate-sim``): publish a simulated fleet's
readings to the broker at QoS 1, all devices over one connection, or (``--device-logins FILE``)
each device over its own, logged in as itself; with ``--register DATABASE_URL``, first register
its devices with their true nominal voltage (and keep the secrets they are given in that file).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import psycopg

from fleetgate_tools.simulated_fleet import Fleet, FleetProfile, Message
from fleetgate_tools.simulated_logins import read_device_logins, register_fleet, write_device_logins
from fleetgate_tools.simulated_publishers import (
    DEFAULT_WINDOW,
    Broker,
    DevicePublishers,
    Publisher,
    PublishError,
    Stats,
)
from gateway.broker_logins import device_username
from gateway.settings import SettingsError

__all__ = ["Pace", "Publisher", "Stats", "build_parser", "live_stream", "main", "publish_messages"]

OLDEST_START = timedelta(days=30)  # the gateway refuses readings older than 31 days


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
    publisher: Publisher | DevicePublishers,
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
        while now < due and not (stop and stop[0]):  # in real time, seconds apart
            publisher.service(min(due - now, 0.05))
            now = time.monotonic()
        if stop and stop[0]:
            break
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
        prog="python -m fleetgate_tools.simulate",
        description="Publish simulated EV-fleet telemetry (meters MTR-xxxx and the vehicles "
        "EV-xxxx they charge) to fleet/meter/{id} and fleet/vehicle/{id} at QoS 1.",
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--mqtt-url",
        default=os.environ.get("MQTT_URL", "mqtt://localhost:1883"),
        help="broker, mqtt://[user:pass@]host[:port], or mqtts://... for TLS (port 8883) "
        "(default: MQTT_URL, else mqtt://localhost:1883)",
    )
    add(
        "--ca-file",
        metavar="FILE",
        help="with mqtts://: the CA certificate the broker's certificate is checked against "
        "(default: the system's CAs)",
    )
    add(
        "--device-logins",
        metavar="FILE",
        help="connect each device on its own, logged in as itself (username meter/ID or "
        "vehicle/ID), with the secrets in this CSV file (columns mqttUsername,secret), which "
        "--register writes; --mqtt-url then holds no login",
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
    add(
        "--seed",
        type=int,
        help="random seed, for a repeatable fleet (the same fleet for --register and the runs "
        "that publish: it decides each meter's nominal voltage)",
    )
    add("--window", type=int, default=DEFAULT_WINDOW, help="unacknowledged messages at most")
    add(
        "--client-id",
        default=f"fleetgate-sim-{uuid.uuid4().hex[:8]}",
        help="MQTT client id of the one connection (default: fleetgate-sim-<random>)",
    )
    add("--quiet", action="store_true", help="no progress line on stderr")
    add(
        "--register",
        metavar="DATABASE_URL",
        help="first register the fleet's meters (with their nominal voltage and phases) and "
        "vehicles (battery capacity) in this database, as a bulk import does; with "
        "--device-logins, keep their secrets in that file (readable by its owner only): those "
        "issued to new devices, and a new one for each device the file has none for. With "
        "--count 0, register only",
    )
    return parser


def _fail(message: str) -> int:
    print(f"fleetgate-sim: {message}", file=sys.stderr)
    return 1


def _register(args: argparse.Namespace, fleet: Fleet, logins_file: Path | None) -> int:
    kept: dict[str, str] | None = None
    if logins_file is not None:
        kept = read_device_logins(logins_file) if logins_file.exists() else {}
    try:
        done = register_fleet(args.register, fleet, kept)
    except psycopg.OperationalError as exc:
        return _fail(f"cannot register the fleet: {' '.join(str(exc).split())}")
    outcomes = done.outcomes
    print(
        f"registered {outcomes.total()} devices: {outcomes['created']} created, "
        f"{outcomes['updated']} updated, {outcomes['unchanged']} unchanged",
        file=sys.stderr,
    )
    if logins_file is not None and kept is not None:
        write_device_logins(logins_file, {**kept, **done.secrets})
        print(
            f"device logins in {logins_file}: {len(done.secrets)} new secrets "
            f"({done.renewed} renewed: the file had none for them)",
            file=sys.stderr,
        )
    return 0


def _device_publishers(
    args: argparse.Namespace, broker: Broker, fleet: Fleet, logins_file: Path
) -> DevicePublishers:
    logins = read_device_logins(logins_file)
    usernames = [device_username(d.kind, d.device_id) for d in fleet.devices()]
    missing = [username for username in usernames if username not in logins]
    if missing:
        raise PublishError(
            f"{logins_file} has no secret for {missing[0]} ({len(missing)} devices in all): "
            f"register the fleet with --register DATABASE_URL --device-logins {logins_file}"
        )
    return DevicePublishers(broker, {u: logins[u] for u in usernames}, args.window)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.devices < 1 or args.array < 1 or args.window < 1 or not args.speed > 0:
        parser.error("--devices, --array, --window and --speed must be positive")
    try:
        broker = Broker.from_url(args.mqtt_url, args.ca_file)
    except SettingsError as exc:
        parser.error(str(exc))
    logins_file = Path(args.device_logins) if args.device_logins else None
    if logins_file is not None and broker.address.username:
        parser.error("with --device-logins each device logs in as itself: no login in --mqtt-url")
    logging.basicConfig(format="fleetgate-sim: %(message)s", level=logging.INFO)
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

    try:
        if args.register and _register(args, fleet, logins_file):
            return 1
        if args.count == 0:
            return 0  # nothing to publish: registration only
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        publisher: Publisher | DevicePublishers
        refused: list[str] = []
        if logins_file is not None:
            publisher = _device_publishers(args, broker, fleet, logins_file)
            refused = publisher.connect()
        else:
            publisher = Publisher(broker, args.client_id, args.window)
            publisher.connect()
    except (PublishError, OSError, ValueError, csv.Error) as exc:
        return _fail(str(exc))
    if refused:
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        _fail(f"the broker refused {', '.join(refused[:5])}{more}: their readings are dropped")
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
