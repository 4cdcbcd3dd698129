"""``./scripts/demo``: broker, database, gateway, HTTP API and simulator, until Ctrl-C.

The stack runs as docs/security.md describes: the simulated devices are registered (closed
enrolment), each logs in as itself over TLS, the broker lets in nobody else but the services'
logins (kept equal to the registry by broker sync), and every process has its own database
login. Without DATABASE_URL / MQTT_URL a private PostgreSQL and Mosquitto run from the state
folder (kept between runs).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from stack_api import create_token, http_ok, link_chargers, revoke_token
from stack_banner import STATUS_INTERVAL_S, print_status, print_summary, query_one
from stack_processes import (
    PROJECT,
    Child,
    StackError,
    Stopping,
    choose_port,
    install_signal_handlers,
    pause,
    spawn,
    stopped_at_exit,
    wait_for,
)
from stack_security import DatabaseUrls, DemoBroker, make_database_logins, migrate

from fleetgate_tools.private_services import PrivatePostgres, ServiceError

PYTHON = sys.executable
FIRST_DATA_TIMEOUT_S = 30.0
# One fleet in every run (and in the registration before them): the seed decides each meter's
# nominal voltage, which the registry must know.
FLEET_SEED: Final = 1

ENVIRONMENT_HELP = """\
environment variables:
  DATABASE_URL          use this PostgreSQL (every process with its login) instead of a private
                        one in the state folder
  MQTT_URL              use this broker (mqtt://[user:pass@]host:port; every client with its
                        login) instead of a private Mosquitto
  ENROLMENT             the gateway's (default closed: only registered devices report)
  FLEETGATE_STATE_DIR   state folder (default .state/ in the project), kept between runs
  FLEETGATE_MQTT_PORT   plain MQTT port of the private broker, for the services (default 1883,
                        or a free one if taken)
  FLEETGATE_MQTTS_PORT  its MQTT over TLS port, for devices and engineers (default 8883, or a
                        free one if taken)
  FLEETGATE_PG_PORT     port of the private database (default 5432, or a free one if taken)
  HTTP_PORT             port of the HTTP API (default 8080, or a free one if taken)
  METRICS_PORT          port of the gateway's /metrics (default 9464, or a free one if taken)
The private services listen on 127.0.0.1 only; logs are in the state folder's logs/."""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/demo",
        description="Run fleetgate with simulated devices until Ctrl-C (or SIGTERM).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=20, help="simulated chargers (20)")
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


def run_tool(argv: list[str], env: Mapping[str, str], what: str) -> str:
    """Run one of fleetgate's commands to its end: what it printed (StackError if it failed)."""
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=PROJECT)
    if done.returncode:
        raise StackError(f"{what} failed:\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


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
        self.database = DatabaseUrls.one_for_all("")
        self.private_database: str | None = None  # the superuser's URL, when it is ours
        self.broker: DemoBroker | None = None  # None: the broker of MQTT_URL
        self.mqtt_url = ""
        self.api_url: str | None = None
        self.tokens: dict[str, str] = {}  # scope: token
        self.logins_file = state / "simulator" / "device-logins.csv"
        self.simulator: list[str] = []  # the command, without pacing options
        self.catching_up: Child | None = None
        self.replay_ends = 0.0  # time.monotonic() when the replay of the last 24 h should end
        self.registered = ""

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str], *, required: bool, stop_s: float
    ) -> Child:
        child = spawn(name, argv, {**self.env, **env}, self.logs, required=required)
        self.children.append(child)
        self.stops.append(lambda: child.stop(stop_s))
        return child

    def start_database(self) -> None:
        if "DATABASE_URL" in os.environ:
            self.database = DatabaseUrls.one_for_all(os.environ["DATABASE_URL"])
            self.lines.append(
                "database   given by DATABASE_URL: every process uses its login (the demo makes "
                "a login per process on its private PostgreSQL only; docs/security.md)"
            )
        else:
            postgres = PrivatePostgres(
                self.state / "postgres", choose_port("FLEETGATE_PG_PORT", 5432)
            )
            if not postgres.initialised:
                print(f"initialising a PostgreSQL cluster in {postgres.datadir}", flush=True)
            elif postgres.running():
                print("a PostgreSQL from an earlier run is still up in the state folder: "
                      "restarting it", flush=True)  # fmt: skip
            self.stops.append(postgres.stop)  # also when start fails halfway
            postgres.start()
            make_database_logins(postgres.url)
            self.private_database = postgres.url
            self.database = DatabaseUrls(
                migrator=postgres.login_url("fleetgate_migrator"),
                gateway=postgres.login_url("gateway"),
                api=postgres.login_url("api"),
                readonly=postgres.login_url("readonly"),
            )
            self.lines.append(
                f"database   {postgres.url} (private PostgreSQL, data {postgres.datadir}); "
                "logins fleetgate_migrator (migrates), gateway, api, readonly"
            )
        migrated = migrate(self.env, self.database.migrator).removeprefix("fleetgate: ")
        who = "DATABASE_URL's login" if self.private_database is None else "fleetgate_migrator"
        self.lines.append(f"           {migrated} (python -m gateway migrate, as {who})")

    def register_simulated_devices(self, devices: int) -> None:
        """Before the broker starts: the fleet in the registry (closed enrolment lets in
        nothing else), and each device's secret kept for the simulator (mode 0600)."""
        fleet = ["--devices", str(devices), "--seed", str(FLEET_SEED)]
        logins = ["--device-logins", str(self.logins_file)] if "MQTT_URL" not in os.environ else []
        simulator = [PYTHON, "-m", "fleetgate_tools.simulate"]
        said = run_tool(
            [*simulator, "--register", self.database.api, *logins, *fleet, "--count", "0"],
            self.env,
            "registering the simulated devices",
        )
        self.simulator = [*simulator, *fleet, *logins]
        self.registered = said.splitlines()[0]  # registered N devices: ... created, ...

    def start_broker(self) -> None:
        if "MQTT_URL" in os.environ:
            self.mqtt_url = os.environ["MQTT_URL"]
            self.lines.append(
                f"broker     {self.mqtt_url} (given by MQTT_URL: the demo cannot give it logins, "
                "ACLs or TLS; every client uses this URL's login, the simulator one connection "
                "for all devices)"
            )
            if self.simulator:
                self.simulator += ["--mqtt-url", self.mqtt_url]
            return
        broker = DemoBroker(
            self.state / "mosquitto",
            choose_port("FLEETGATE_MQTT_PORT", 1883),
            choose_port("FLEETGATE_MQTTS_PORT", 8883),
        )
        broker.make_logins(self.env, self.database.api)
        self.stops.append(broker.stop)  # also when start fails halfway
        output = self.logs / "mosquitto.log"
        mosquitto = Child("mosquitto", broker.start(output, tied=True), output, required=True)
        self.children.append(mosquitto)
        sync = self.spawn(
            "broker-sync",
            [PYTHON, "-m", "gateway.broker_sync", "run"],
            {**broker.sync_env(), "DATABASE_URL": self.database.api},
            required=True,
            stop_s=10,
        )
        self.broker = broker
        self.mqtt_url = f"mqtt://127.0.0.1:{broker.port}"
        if self.simulator:
            self.simulator += ["--mqtt-url", broker.tls_url, "--ca-file", str(broker.ca_file)]
        self.lines += [
            f"broker     {broker.tls_url} for devices and engineers (TLS, CA {broker.ca_file}), "
            f"{self.mqtt_url} for the services; nobody without a login (private Mosquitto, "
            f"log {mosquitto.log})",
            f"           broker sync keeps its logins equal to the registry (log {sync.log})",
        ]

    def service_mqtt(self, role: str) -> dict[str, str]:
        """MQTT_URL (and for the gateway MQTT_ALERTS_URL) of a service: its own logins."""
        if self.broker is None:
            return {"MQTT_URL": self.mqtt_url}
        urls = {"MQTT_URL": self.broker.service_url(role)}
        if role == "gateway":
            urls["MQTT_ALERTS_URL"] = self.broker.service_url("alerts")
        return urls

    def start_gateway(self) -> None:
        enrolment = os.environ.get("ENROLMENT", "closed")
        metrics_port = choose_port("METRICS_PORT", 9464)
        env = {
            "DATABASE_URL": self.database.gateway,
            **self.service_mqtt("gateway"),
            "ENROLMENT": enrolment,
            "METRICS_PORT": str(metrics_port),
        }
        # SIGTERM makes the gateway commit what it took; give it its own deadline and a little.
        gateway = self.spawn("gateway", [PYTHON, "-m", "gateway"], env, required=True, stop_s=20)
        wait_for(
            "subscription of the gateway",
            lambda: "subscribed (QoS 1)" in gateway.log.read_text(errors="replace"),
            gateway,
        )
        metrics = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "off"
        self.lines.append(f"gateway    {enrolment} enrolment, metrics {metrics}, log {gateway.log}")

    def start_api(self) -> None:
        port = choose_port("HTTP_PORT", 8080)
        host = self.env.get("HTTP_HOST", "127.0.0.1")
        env = {"DATABASE_URL": self.database.api, **self.service_mqtt("api")}
        env.update(HTTP_HOST=host, HTTP_PORT=str(port))
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        api = self.spawn("http_api", [PYTHON, "-m", "http_api"], env, required=False, stop_s=10)
        try:
            wait_for(f"answer from {url}/health", lambda: http_ok(f"{url}/health"), api)
        except StackError as exc:
            api.reported = True
            self.lines.append(f"http api   failed to start: {exc}")
            return
        self.api_url = url
        self.lines.append(f"http api   {url} (log {api.log})")
        tool_env = {**self.env, "DATABASE_URL": self.database.api}
        for scope in ("read", "admin"):
            created = create_token(tool_env, scope)
            if created:
                token_id, self.tokens[scope] = created
                # The demo leaves no access behind it.
                self.stops.append(functools.partial(revoke_token, tool_env, token_id))

    def start_simulator(self, devices: int, catch_up_s: float) -> None:
        """Replay the last 24 h quickly, so that the 24 h analytics have data at once; once
        that run ends (check_children), the same fleet goes on in real time."""
        speed = f"{24 * 3600 / catch_up_s:g}"
        catch_up = [*self.simulator, "--speed", speed, "--duration", f"{catch_up_s:g}"]
        self.catching_up = self.spawn("simulator", catch_up, {}, required=False, stop_s=10)
        self.replay_ends = time.monotonic() + catch_up_s
        if self.broker:
            how = f"each device logged in as itself over TLS, logins in {self.logins_file}"
        else:
            how = "all devices over one connection"
        self.lines += [
            f"simulator  {devices} chargers and their vehicles (seed {FLEET_SEED}), the last 24 h "
            f"in {catch_up_s:g} s, then live (log {self.catching_up.log})",
            f"           {self.registered}; {how}",
        ]

    def replay_note(self) -> str | None:
        """When the replay should end, for the summary: until then the analytics of the last
        24 h are missing its latest hours and devices look offline. None without a replay."""
        if self.catching_up is None:
            return None
        if self.catching_up.process.poll() is not None:
            return "replay     of the last 24 h done: a line says when the simulator is live"
        left = max(0.0, self.replay_ends - time.monotonic())
        ends = time.strftime("%H:%M:%S %Z", time.localtime(time.time() + left))
        return (
            f"replay     of the last 24 h ends at about {ends} (in {left:.0f} s): until then the "
            "24 h figures are incomplete (devices offline, coverage low); a line says when the "
            "simulator is live"
        )

    def go_live(self, caught_up: Child) -> None:
        caught_up.reported = True
        self.catching_up = None
        live = self.spawn("simulator-live", self.simulator, {}, required=False, stop_s=10)
        print(
            "simulator caught up with the last 24 h: the 24 h figures are complete; now live, "
            f"the same fleet (seed {FLEET_SEED}) in real time (log {live.log})",
            flush=True,
        )

    def wait_for_first_reading(self) -> str | None:
        """The name of a vehicle once one has sent a reading, None if none did in time."""
        deadline = time.monotonic() + FIRST_DATA_TIMEOUT_S
        while time.monotonic() < deadline:
            sql = "SELECT min(name) FROM vehicle WHERE received_at IS NOT NULL"
            row = query_one(self.database.readonly, sql)
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


def run(args: argparse.Namespace, stack: Stack) -> None:
    started = time.monotonic()
    stack.start_database()
    if not args.no_simulator:
        stack.register_simulated_devices(args.devices)
    stack.start_broker()
    stack.start_gateway()
    stack.start_api()
    if args.no_simulator:
        stack.lines.append("simulator  not started (--no-simulator)")
    else:
        stack.start_simulator(args.devices, args.catch_up)
    vehicle = stack.wait_for_first_reading() if stack.simulator else None
    if vehicle and stack.api_url:
        linked = link_chargers(stack.api_url, {**stack.env, "DATABASE_URL": stack.database.api},
                               args.devices)  # fmt: skip
        stack.lines.append(
            f"links      meter MTR-NNNN feeds vehicle EV-NNNN ({linked} of {args.devices} linked)"
        )
    if note := stack.replay_note():
        stack.lines.append(note)
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
    except (StackError, ServiceError) as exc:
        print(f"fleetgate demo: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
