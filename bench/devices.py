"""``python -m bench.devices``: the device registry at fleet scale, with authentication on.

(1) N devices imported through the HTTP API, broker_sync running as in production, until all N
have logged in to a secure Mosquitto; (2) a storm of N logins at once, then a registry change
while they are connected; (3) single-reading QoS 1 ingest with authentication on (secure
broker, service logins, closed enrolment) against off (anonymous broker, open enrolment), in
alternating rounds. Private PostgreSQL and brokers (tests/services.py); prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import msgspec
import psycopg

from bench.auth_ingest import Rounds, Side, figures, in_turns
from bench.harness import (
    CpuMeter,
    GatewayProcess,
    ServiceProcess,
    children_of,
    cpu_seconds,
    machine,
    print_figures,
    proc_status_kb,
)
from bench.mqtt_logins import Session, Storm, log_in, log_out, longest_ping_s, storm
from gateway.broker_logins import hash_secret, secret_matches
from gateway.broker_sync import add_login
from gateway.database import apply_schema
from gateway.registry import DeviceRecord, register
from http_api.device_bodies import DeviceWithSecret, ImportResult
from http_api.tokens import create_token
from tests.services import Mosquitto, Postgres, free_port, wait_for_port


@dataclasses.dataclass(frozen=True, slots=True)
class Scale:
    devices: int  # (1) and (2)
    messages: int  # (3), per side and round
    rounds: int  # (3): on and off once each per round, in turns (on off, off on, ...)
    fleet: int  # (3): chargers (a meter and a vehicle each) per publisher process


FULL = Scale(devices=10_000, messages=100_000, rounds=4, fleet=1000)
QUICK = Scale(devices=1000, messages=20_000, rounds=2, fleet=200)
IMPORT_ROWS = 10_000  # per POST: MAX_BODY_BYTES (1 MiB) holds about that many rows
CONNECT_TIMEOUT_S = 300.0
PROBES = 70  # wait_for_gateway's probe devices, registered for closed enrolment
_IMPORTED = msgspec.json.Decoder(ImportResult)
_CREATED = msgspec.json.Decoder(DeviceWithSecret)


def raise_file_limit(connections: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, for this process and the brokers it starts (they
    inherit it: Mosquitto has no setting of its own): a socket per connection on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + 1000
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"{connections:,} connections need {needed:,} files; the limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def device_ids(count: int) -> list[tuple[str, str]]:
    """(kind, id): meters and vehicles in turns."""
    return [("meter" if n % 2 else "vehicle", f"DEV-{n:05d}") for n in range(1, count + 1)]


@dataclasses.dataclass(slots=True)
class Bench:
    """The services of a run, the service logins' secrets and the figures gathered so far."""

    scale: Scale
    publishers: int
    logs: Path
    postgres: Postgres
    secure: Mosquitto
    anonymous: Mosquitto
    services: dict[str, ServiceProcess] = dataclasses.field(default_factory=dict)
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)
    token: str = ""
    load: float = dataclasses.field(default_factory=lambda: os.getloadavg()[0])
    api_port: int = 0
    rows: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def secure_url(self) -> str:
        return self.postgres.url

    @property
    def open_url(self) -> str:
        return self.postgres.url.rsplit("/", 1)[0] + "/fleetgate_open"

    @property
    def broker_pid(self) -> int:
        assert self.secure.process is not None
        return self.secure.process.pid

    def mqtt_url(self, login: str) -> str:
        secret = quote(self.secrets[login], safe="")
        return f"mqtt://{login}:{secret}@127.0.0.1:{self.secure.port}"

    def row(self, what: str, measured: str, target: str = "") -> None:
        self.rows.append((what, measured, target))
        print(f"  {what}: {measured}", file=sys.stderr, flush=True)

    def check_alive(self) -> None:
        for service in self.services.values():
            service.check_alive()


def publisher_logins(bench: Bench) -> list[str]:
    return [f"bench-pub-{n}" for n in range(1, bench.publishers + 1)]


async def prepare_databases(bench: Bench) -> None:
    """Both schemas; on the secure side the service logins (the publishers' are role api,
    which may publish to every device's topic, as HTTP ingestion does), the probes that
    wait_for_gateway publishes as, and an admin token."""
    with psycopg.connect(bench.postgres.url, autocommit=True) as admin:
        admin.execute(b"CREATE DATABASE fleetgate_open")
    for url in (bench.secure_url, bench.open_url):
        await apply_schema(url)
    roles = {"bench-gateway": "gateway", "bench-alerts": "alerts", "bench-api": "api"}
    roles |= {login: "api" for login in ["bench-probe", *publisher_logins(bench)]}
    for login, role in roles.items():
        bench.secrets[login] = await add_login(bench.secure_url, login, role)
    probes = [DeviceRecord("meter", f"PROBE-{n}") for n in range(PROBES)]
    async with await psycopg.AsyncConnection.connect(bench.secure_url) as conn:
        await register(conn, probes)
    _, bench.token = await create_token(bench.secure_url, "admin", "bench.devices")


def start_services(bench: Bench) -> None:
    """broker_sync beside the secure broker, and the HTTP API, as compose runs them."""
    sync = ServiceProcess(
        "broker_sync",
        ["-m", "gateway.broker_sync", "run"],
        {
            **os.environ,
            "DATABASE_URL": bench.secure_url,
            "MOSQUITTO_PASSWORD_FILE": str(bench.secure.password_file),
            "MOSQUITTO_ACL_FILE": str(bench.secure.acl_file),
            "MOSQUITTO_PID_FILE": str(bench.secure.pid_file),
        },
        bench.logs / "broker_sync.log",
    )
    bench.api_port = free_port()
    api = ServiceProcess(
        "http_api",
        ["-m", "http_api"],
        {
            **os.environ,
            "DATABASE_URL": bench.secure_url,
            "MQTT_URL": bench.mqtt_url("bench-api"),
            "HTTP_PORT": str(bench.api_port),
            "LOG_LEVEL": "WARNING",
        },
        bench.logs / "http_api.log",
    )
    for service in (sync, api):
        service.start()
        bench.services[service.name] = service
    wait_until_listening(api, bench.api_port)


def wait_until_listening(service: ServiceProcess, port: int, timeout_s: float = 60) -> None:
    """Until ``service`` listens on ``port``; its log's tail at once if it exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check_alive()
        with contextlib.suppress(TimeoutError):
            wait_for_port(port, timeout=0.5)
            return
    raise TimeoutError(f"{service.name} does not listen on {port} after {timeout_s} s")


def wait_for_first_sync(bench: Bench) -> None:
    log_out([log_in(bench.secure.port, "bench-probe", bench.secrets["bench-probe"], 60, 0.1)])


def post(bench: Bench, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    """An admin's request to the HTTP API: its status and body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{bench.api_port}{path}",
        data=body,
        headers={"Authorization": f"Bearer {bench.token}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def import_over_http(bench: Bench, devices: list[tuple[str, str]]) -> dict[str, str]:
    """POST /v1/devices/import as CSV, as an operator does; each login's secret."""
    secrets: dict[str, str] = {}
    for first in range(0, len(devices), IMPORT_ROWS):
        lines = ["kind,id,site", *(f"{k},{i},bench" for k, i in devices[first:][:IMPORT_ROWS])]
        body = ("\n".join(lines) + "\n").encode()
        status, answer = post(bench, "/v1/devices/import", body, "text/csv")
        if status != 200:
            raise RuntimeError(f"import: {status} {answer[:500]!r}")
        for result in _IMPORTED.decode(answer).results:
            assert isinstance(result.mqtt_username, str), result
            assert isinstance(result.secret, str), result
            secrets[result.mqtt_username] = result.secret
    return secrets


def create_over_http(bench: Bench, kind: str, device_id: str) -> tuple[str, str]:
    body = msgspec.json.encode({"kind": kind, "id": device_id})
    status, answer = post(bench, "/v1/devices", body, "application/json")
    if status != 201:
        raise RuntimeError(f"create: {status} {answer[:500]!r}")
    created = _CREATED.decode(answer)
    return created.mqtt_username, created.secret


def registry_cpu(bench: Bench) -> CpuMeter:
    sync, api = bench.services["broker_sync"], bench.services["http_api"]
    postmaster = int((bench.postgres.datadir / "postmaster.pid").read_text().split()[0])
    return CpuMeter(
        {
            "HTTP API": lambda: [api.pid],
            "broker_sync": lambda: [sync.pid],
            "mosquitto": lambda: [bench.broker_pid],
            "postgres": lambda: children_of(postmaster),
            "bench clients": lambda: [os.getpid()],
        }
    )


def cpu_note(phase: str, meter: CpuMeter, began: float) -> str:
    """What each group's CPU time was since ``began`` (when the meter started), in seconds."""
    seconds = time.monotonic() - began
    percent = meter.stop()
    shares = ", ".join(f"{name} {value * seconds / 100:.2f} s" for name, value in percent.items())
    return f"CPU during {phase} ({seconds:.1f} s): {shares}"


def import_until_connected(bench: Bench) -> dict[str, str]:
    """(1) From the import's start until the last of its devices was let in: the import over
    HTTP, one device tried every 20 ms until broker_sync's reload lets it in, then all at once
    (each retried until let in)."""
    devices = device_ids(bench.scale.devices)
    meter = registry_cpu(bench)
    meter.start()
    started = time.monotonic()
    secrets = import_over_http(bench, devices)
    answered = time.monotonic() - started
    kind, last = devices[-1]
    probe = f"{kind}/{last}"
    first = log_in(bench.secure.port, probe, secrets[probe], 120, retry_s=0.02)
    let_in = first.connected_at - started
    log_out([first])
    idle_kb = proc_status_kb(bench.broker_pid, "VmRSS")
    overflows = listen_overflows()
    everyone = storm(bench.secure.port, secrets, CONNECT_TIMEOUT_S)
    overflows = listen_overflows() - overflows
    done = everyone.started + everyone.last_s - started
    connected_kb = proc_status_kb(bench.broker_pid, "VmRSS")
    bench.notes.append(cpu_note("(1)", meter, started))
    log_out(everyone.sessions)
    n = len(devices)
    bench.row(
        f"(1) import {n:,} devices over HTTP until all are connected",
        f"{done:.1f} s to the last CONNACK (HTTP answer {answered:.1f} s; broker_sync's reload "
        f"let the first in at {let_in:.1f} s; then all {n:,} at once in {everyone.last_s:.1f} s: "
        f"{storm_figures(everyone, overflows)})",
    )
    bench.row(
        f"(1) broker RSS with {n:,} logins: idle / all connected",
        f"{idle_kb / 1024:,.1f} MB / {connected_kb / 1024:,.1f} MB "
        f"({(connected_kb - idle_kb) / n * 1024:,.0f} bytes per connection)",
    )
    return secrets


def storm_figures(everyone: Storm, overflows: int) -> str:
    retries = everyone.attempts - len(everyone.sessions)
    return (
        f"p50 {everyone.quantile_s(0.5):.2f} s, p99 {everyone.quantile_s(0.99):.2f} s; "
        f"{retries:,} retries; {overflows:,} listen-queue overflows"
    )


def ping_for(session: Session, seconds: float) -> float:
    """The longest PINGREQ round trip on ``session`` over ``seconds``."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return longest_ping_s(session, stop)
    finally:
        timer.cancel()


def listen_overflows() -> int:
    """How many connections the kernel has dropped because a listen queue was full (every
    listener of this network namespace; Mosquitto 2.0 listens with a backlog of 100)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def hash_check_us() -> float:
    """What one ``$7$`` check costs (PBKDF2-SHA512, 101 iterations; hashlib's OpenSSL, as the
    broker's), in microseconds of this process's CPU time, so that waiting for a core on a
    busy machine does not count: the best of five runs of 200."""
    secret_hash = hash_secret("x")
    best = float("inf")
    for _ in range(5):
        began = time.process_time()
        for _ in range(200):
            secret_matches("x", secret_hash)
        best = min(best, (time.process_time() - began) / 200)
    return best * 1e6


def login_storm(bench: Bench, secrets: dict[str, str]) -> None:
    """(2) Every device at once, then a registry change while they are all connected."""
    pid = bench.broker_pid
    before_kb = proc_status_kb(pid, "VmRSS")
    meter = registry_cpu(bench)
    meter.start()
    began = time.monotonic()
    cpu_before = cpu_seconds([pid])
    overflows = listen_overflows()
    everyone = storm(bench.secure.port, secrets, CONNECT_TIMEOUT_S)
    broker_cpu = cpu_seconds([pid]) - cpu_before
    overflows = listen_overflows() - overflows
    bench.notes.append(cpu_note("(2), the storm", meter, began))
    after_kb = proc_status_kb(pid, "VmRSS")
    n = len(secrets)
    hash_us = hash_check_us()
    bench.row(
        f"(2) storm: {n:,} devices connect at once",
        f"all connected in {everyone.last_s:.2f} s: {n / everyone.last_s:,.0f} logins/s "
        f"({storm_figures(everyone, overflows)})",
    )
    bench.row(
        "(2) broker during the storm",
        f"RSS {before_kb / 1024:,.1f} -> {after_kb / 1024:,.1f} MB; CPU {broker_cpu:.2f} s = "
        f"{broker_cpu / n * 1e6:,.0f} us per login, of which a $7$ check is ~{hash_us:.0f} us",
    )
    # A registry change while everyone is connected: broker_sync renders both files and sends
    # SIGHUP, and Mosquitto checks every connected client's login against the new file.
    watched = everyone.sessions[0]
    quiet_ping = ping_for(watched, 0.5)
    stalls: list[float] = []
    stop = threading.Event()
    pinging = threading.Thread(
        target=lambda: stalls.append(longest_ping_s(watched, stop)), name="ping during reload"
    )
    cpu_before = cpu_seconds([pid])
    started = time.monotonic()
    pinging.start()
    try:
        username, secret = create_over_http(bench, "meter", "LATE-1")
        late = log_in(bench.secure.port, username, secret, 120, retry_s=0.02)
        # Mosquitto lets new clients in once the reload's checks are done; a little longer in
        # case the last of them ran after that.
        time.sleep(0.3)
    finally:
        stop.set()
        pinging.join()
    let_in = late.connected_at - started
    reload_cpu = cpu_seconds([pid]) - cpu_before
    dropped = sum(s.disconnected for s in everyone.sessions)
    bench.row(
        f"(2) a device added while {n:,} are connected",
        f"let in {let_in:.2f} s after POST /v1/devices; broker CPU {reload_cpu:.2f} s "
        f"(~{n:,} checks of {hash_us:.0f} us = {n * hash_us / 1e6:.2f} s); longest PINGREQ "
        f"round trip {stalls[0] * 1000:,.0f} ms (without a change {quiet_ping * 1000:,.0f} ms); "
        f"{dropped:,} connected devices dropped",
        "0 dropped",
    )
    log_out([*everyone.sessions, late])


def registry_phases(bench: Bench) -> None:
    wait_for_first_sync(bench)
    secrets = import_until_connected(bench)
    bench.check_alive()
    login_storm(bench, secrets)
    bench.check_alive()


def ingest_on_against_off(bench: Bench) -> None:
    """(3) The on side: the secure broker, the gateway's and the publishers' own logins, closed
    enrolment; the off side: the anonymous broker, open enrolment; each its own database."""
    on_gateway = GatewayProcess(
        bench.secure_url, bench.mqtt_url("bench-gateway"), "bench-gateway", bench.logs / "gw-on.log"
    )
    on_gateway.env["ENROLMENT"] = "closed"
    on_gateway.env["MQTT_ALERTS_URL"] = bench.mqtt_url("bench-alerts")
    on = Side(
        "on",
        on_gateway,
        bench.secure_url,
        bench.secure,
        [bench.mqtt_url(login) for login in publisher_logins(bench)],
        probe_url=bench.mqtt_url("bench-probe"),
    )
    off_gateway = GatewayProcess(
        bench.open_url, bench.anonymous.url, "bench-gateway", bench.logs / "gw-off.log"
    )
    off = Side(
        "off",
        off_gateway,
        bench.open_url,
        bench.anonymous,
        [bench.anonymous.url] * bench.publishers,
        probe_url=bench.anonymous.url,
    )
    scale = bench.scale
    in_turns(on, off, Rounds(scale.messages, scale.rounds, scale.fleet))
    rows, notes = figures(on, off)
    for row in rows:
        bench.row(*row)
    bench.notes += notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devices", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled down: a smoke run")
    parser.add_argument("--devices", type=int, help="(1) and (2): devices (default 10,000)")
    parser.add_argument("--messages", type=int, help="(3): messages per side and round")
    parser.add_argument("--rounds", type=int, help="(3): rounds of on and off (0: skip (3))")
    parser.add_argument("--fleet", type=int, help="(3): chargers per publisher process")
    parser.add_argument("--publishers", type=int, default=2, help="(3): publisher processes")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    scale = Scale(
        devices=args.devices or scale.devices,
        messages=args.messages or scale.messages,
        rounds=scale.rounds if args.rounds is None else args.rounds,
        fleet=args.fleet or scale.fleet,
    )
    files = raise_file_limit(scale.devices)
    logs = Path(tempfile.mkdtemp(prefix="fleetgate-bench-devices-"))
    print(f"machine: {machine()}; open files {files:,}; logs in {logs}", file=sys.stderr)
    postgres = Postgres()
    brokers: list[Mosquitto] = []
    bench: Bench | None = None
    try:
        secure = Mosquitto(secure=True)
        brokers.append(secure)
        anonymous = Mosquitto()
        brokers.append(anonymous)
        bench = Bench(scale, args.publishers, logs, postgres, secure, anonymous)
        asyncio.run(prepare_databases(bench))
        start_services(bench)
        registry_phases(bench)
        if scale.rounds:
            ingest_on_against_off(bench)
        bench.check_alive()
    finally:
        if bench is not None:
            for service in bench.services.values():
                service.stop()
        for broker in brokers:
            broker.close()
        postgres.close()
        report(bench, scale)  # what was measured, also when a phase failed
    shutil.rmtree(logs, ignore_errors=True)
    return 0


METHOD = """method:
- (1): one CSV POST /v1/devices/import per 10,000 devices (meters and vehicles in turns), with
  python -m gateway.broker_sync run and python -m http_api as subprocesses, from the import's
  start: the import's last device tries to log in every 20 ms until let in (broker_sync has
  rendered both files and sent SIGHUP), then all of them connect at once, each retried every
  0.1 s until let in; to the last CONNACK. RSS is the broker's VmRSS.
- (2): the same logins again, all at once, each on its own TCP connection (raw MQTT 3.1.1
  CONNECT with username and password, non-blocking sockets under one epoll loop); p50/p99
  of the time from the storm's start to each device's CONNACK; listen-queue overflows from
  /proc/net/netstat (Mosquitto 2.0 listens with a backlog of 100; TCP sends a dropped
  handshake again after 1 s, then 3 s, 7 s...). Then one device created with
  POST /v1/devices while all are connected: time until it is let in, the broker's CPU
  meanwhile, and the longest PINGREQ round trip of one connected device until then.
- (3): two gateways, each with its own database on one PostgreSQL and its own broker: on =
  secure broker (password file and ACL from broker_sync), the gateway's own logins, publishers
  with service logins of role api, ENROLMENT=closed; off = anonymous broker, ENROLMENT=open.
  Each round registers fresh publisher devices on both sides (so that only authentication
  and enrolment differ), then publishes the same number of single readings at QoS 1 through
  one side, then the other, in turns; rate between 10% and 90% committed (bench.timeline)."""


def report(bench: Bench | None, scale: Scale) -> None:
    if bench is None or not bench.rows:
        return
    setting = (
        f"load average {bench.load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
        f"{bench.publishers} publisher processes in (3); {scale}"
    )
    print_figures("device", setting, bench.rows, 9, method=METHOD, notes=bench.notes)


if __name__ == "__main__":
    sys.exit(main())
