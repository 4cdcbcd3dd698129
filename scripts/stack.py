"""``./scripts/demo``: broker, database, gateway, HTTP API and simulator, until Ctrl-C.

Without DATABASE_URL / MQTT_URL a private PostgreSQL and Mosquitto run from the state folder
(kept between runs). Parts of the stack that do not exist yet are reported and left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from stack_api import create_token, http_ok, link_chargers
from stack_processes import (
    PROJECT,
    Child,
    EmbeddedPostgres,
    StackError,
    Stopping,
    accepts_connections,
    choose_port,
    install_signal_handlers,
    mosquitto_config,
    pause,
    spawn,
    stopped_at_exit,
    wait_for,
)

PYTHON = sys.executable
STATUS_INTERVAL_S = 10.0
FIRST_DATA_TIMEOUT_S = 30.0

ENVIRONMENT_HELP = """\
environment variables:
  DATABASE_URL          use this PostgreSQL instead of a private one in the state folder
  MQTT_URL              use this broker (mqtt://host:port) instead of a private Mosquitto
  FLEETGATE_STATE_DIR   state folder (default .state/ in the project), kept between runs
  FLEETGATE_MQTT_PORT   port of the private broker (default 1883, or a free one if taken)
  FLEETGATE_PG_PORT     port of the private database (default 5432, or a free one if taken)
  HTTP_PORT             port of the HTTP API (default 8080, or a free one if taken)
  METRICS_PORT          port of the gateway's /metrics (default 9464, or a free one if taken)
The private services listen on 127.0.0.1 only; logs are in the state folder's logs/."""

COUNTS_SQL = """
SELECT (SELECT count(*) FROM meter_reading), (SELECT count(*) FROM vehicle_reading),
       (SELECT count(*) FROM dead_letter)"""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/demo",
        description="Run fleetgate with simulated devices until Ctrl-C (or SIGTERM).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (20)")
    parser.add_argument(
        "--catch-up",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="replay the last 24 h of the fleet in this many seconds, then go on in real time "
        "(120)",
    )
    parser.add_argument("--no-simulator", action="store_true", help="start no simulator")
    return parser.parse_args(argv)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def query_one(database_url: str, sql: str) -> tuple[Any, ...] | None:
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            return conn.execute(sql.encode()).fetchone()
    except psycopg.Error:
        return None


class Stack:
    """What is running, and the addresses to print."""

    def __init__(self, state: Path, stops: list[Callable[[], None]]) -> None:
        self.state = state
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stops = stops
        self.children: list[Child] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.lines: list[str] = []  # what runs where, printed once everything is up
        self.mqtt_url = ""
        self.database_url = ""
        self.api_url: str | None = None
        self.token: str | None = None
        self.simulator: list[str] = []  # the command, without pacing options
        self.catching_up: Child | None = None

    def spawn(self, name: str, argv: list[str], *, required: bool, stop_s: float) -> Child:
        child = spawn(name, argv, self.env, self.logs, required=required)
        self.children.append(child)
        self.stops.append(lambda: child.stop(stop_s))
        return child

    def start_broker(self) -> None:
        if "MQTT_URL" in os.environ:
            self.mqtt_url = os.environ["MQTT_URL"]
            self.lines.append(f"broker     {self.mqtt_url} (given by MQTT_URL)")
            return
        port = choose_port("FLEETGATE_MQTT_PORT", 1883)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        config = mosquitto_config(self.state / "mosquitto", port)
        broker = self.spawn("mosquitto", [binary, "-c", str(config)], required=True, stop_s=10)
        wait_for(
            f"broker on 127.0.0.1:{port}", lambda: accepts_connections("127.0.0.1", port), broker
        )
        self.mqtt_url = f"mqtt://127.0.0.1:{port}"
        self.lines.append(f"broker     {self.mqtt_url} (private Mosquitto, log {broker.log})")

    def start_database(self) -> None:
        if "DATABASE_URL" in os.environ:
            self.database_url = os.environ["DATABASE_URL"]
            self.lines.append("database   (given by DATABASE_URL)")
            return
        postgres = EmbeddedPostgres(self.state / "postgres", choose_port("FLEETGATE_PG_PORT", 5432))
        self.stops.append(postgres.stop)  # also when start fails halfway
        postgres.start()
        self.database_url = postgres.url
        self.lines.append(
            f"database   {postgres.url} (private PostgreSQL, data {postgres.datadir})"
        )

    def start_gateway(self) -> None:
        self.env.update(DATABASE_URL=self.database_url, MQTT_URL=self.mqtt_url)
        # The demo's simulated devices are not registered: they enrol by their first reading.
        self.env.setdefault("ENROLMENT", "open")
        metrics_port = choose_port("METRICS_PORT", 9464)
        self.env["METRICS_PORT"] = str(metrics_port)
        # SIGTERM makes the gateway commit what it took; give it its own deadline and a little.
        gateway = self.spawn("gateway", [PYTHON, "-m", "gateway"], required=True, stop_s=20)
        wait_for(
            "subscription of the gateway",
            lambda: "subscribed (QoS 1)" in gateway.log.read_text(errors="replace"),
            gateway,
        )
        metrics = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "off"
        self.lines.append(f"gateway    metrics {metrics}, log {gateway.log}")

    def start_api(self) -> None:
        if not has_module("http_api.__main__"):
            self.lines.append("http api   not started: http_api has no __main__ yet")
            return
        port = choose_port("HTTP_PORT", 8080)
        host = self.env.setdefault("HTTP_HOST", "127.0.0.1")
        self.env["HTTP_PORT"] = str(port)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        api = self.spawn("http_api", [PYTHON, "-m", "http_api"], required=False, stop_s=10)
        try:
            wait_for(f"answer from {url}/health", lambda: http_ok(f"{url}/health"), api)
        except StackError as exc:
            api.reported = True
            self.lines.append(f"http api   failed to start: {exc}")
            return
        self.api_url = url
        read = create_token(self.env, "read")
        self.token = read[1] if read else None
        self.lines.append(f"http api   {url} (log {api.log})")
        if self.token:
            self.lines.append(f"read token {self.token}")

    def start_simulator(self, devices: int, catch_up_s: float) -> None:
        """Replay the last 24 h quickly, so that the 24 h analytics have data at once; once
        that run ends (check_children), the same fleet goes on in real time."""
        if not has_module("gateway.simulate"):
            self.lines.append("simulator  not started: gateway.simulate does not exist yet")
            return
        self.simulator = [PYTHON, "-m", "gateway.simulate", "--mqtt-url", self.mqtt_url]
        self.simulator += ["--devices", str(devices)]
        speed = f"{24 * 3600 / catch_up_s:g}"
        catch_up = [*self.simulator, "--speed", speed, "--duration", f"{catch_up_s:g}"]
        self.catching_up = self.spawn("simulator", catch_up, required=False, stop_s=10)
        self.lines.append(
            f"simulator  {devices} chargers and their vehicles: the last 24 h in {catch_up_s:g} s, "
            f"then live (log {self.catching_up.log})"
        )

    def go_live(self, caught_up: Child) -> None:
        caught_up.reported = True
        self.catching_up = None
        live = self.spawn("simulator-live", self.simulator, required=False, stop_s=10)
        print(f"simulator caught up with the last 24 h; now live (log {live.log})", flush=True)

    def wait_for_first_reading(self) -> str | None:
        """The name of a vehicle once one has sent a reading, None if none did in time."""
        deadline = time.monotonic() + FIRST_DATA_TIMEOUT_S
        while time.monotonic() < deadline:
            row = query_one(self.database_url, "SELECT min(name) FROM vehicle")
            if row and row[0]:
                return str(row[0])
            pause(0.5)
        return None

    def check_children(self) -> None:
        if self.catching_up is not None and self.catching_up.process.poll() == 0:
            self.go_live(self.catching_up)
        for child in self.children:
            code = child.process.poll()
            if code is None or child.reported:
                continue
            child.reported = True
            if child.required:
                raise StackError(
                    f"{child.name} exited with code {code}; last lines of "
                    f"{child.log}:\n{child.tail()}"
                )
            print(
                f"{child.name} exited with code {code} (see {child.log}); the rest keeps running",
                flush=True,
            )


def print_summary(stack: Stack, vehicle: str | None, startup_s: float) -> None:
    mqtt = urllib.parse.urlsplit(stack.mqtt_url)
    out = [f"\nfleetgate demo is running ({startup_s:.1f} s to start); Ctrl-C stops everything.\n"]
    out += [f"  {line}" for line in stack.lines]
    out.append("\nTry:")
    if stack.api_url:
        auth = f"-H 'Authorization: Bearer {stack.token}' " if stack.token else ""
        path = f"/v1/analytics/performance/{vehicle or '<vehicleId>'}"
        out.append(f"  curl {auth}{stack.api_url}{path}   # 24 h efficiency of a vehicle")
    out.append(f"  mosquitto_sub -h {mqtt.hostname} -p {mqtt.port or 1883} -t 'fleet/alerts/#' -v")
    out.append(
        f"  mosquitto_sub -h {mqtt.hostname} -p {mqtt.port or 1883} -t 'fleet/#' -v   # everything"
    )
    if "DATABASE_URL" not in os.environ:
        out.append(f"  psql {stack.database_url} -c 'SELECT * FROM vehicle'")
    if vehicle is None:
        out.append("\nNo vehicle reading has arrived yet: publish one to fleet/vehicle/<id>.")
    print("\n".join(out) + "\n", flush=True)


def print_status(stack: Stack, previous: list[int]) -> None:
    row = query_one(stack.database_url, COUNTS_SQL)
    if row is None:
        print("readings: database unreachable", flush=True)
        return
    meters, vehicles, dead = (int(value) for value in row)
    added = meters + vehicles - sum(previous)
    previous[:] = [meters, vehicles]
    print(
        f"readings stored: {meters} meter, {vehicles} vehicle (+{added} in "
        f"{STATUS_INTERVAL_S:.0f} s), dead letters: {dead}",
        flush=True,
    )


def run(args: argparse.Namespace, stack: Stack) -> None:
    started = time.monotonic()
    stack.start_broker()
    stack.start_database()
    stack.start_gateway()
    stack.start_api()
    if args.no_simulator:
        stack.lines.append("simulator  not started (--no-simulator)")
    else:
        stack.start_simulator(args.devices, args.catch_up)
    vehicle = stack.wait_for_first_reading() if stack.simulator else None
    if vehicle and stack.api_url:
        linked = link_chargers(stack.api_url, stack.env, args.devices)
        stack.lines.append(
            f"links      meter MTR-NNNN feeds vehicle EV-NNNN ({linked} of {args.devices} linked)"
        )
    print_summary(stack, vehicle, time.monotonic() - started)
    previous = [0, 0]
    next_status = time.monotonic()
    while True:
        stack.check_children()
        if time.monotonic() >= next_status:
            print_status(stack, previous)
            next_status += STATUS_INTERVAL_S
        pause(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    install_signal_handlers()
    state = Path(os.environ.get("FLEETGATE_STATE_DIR") or PROJECT / ".state").resolve()
    try:
        with stopped_at_exit() as stops:
            run(args, Stack(state, stops))
    except Stopping:
        return 0
    except StackError as exc:
        print(f"fleetgate demo: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
