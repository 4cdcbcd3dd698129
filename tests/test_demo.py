"""``./scripts/demo`` as a user runs it: the stack comes up secured (registered devices, each
logged in as itself over TLS, no anonymous clients, a database login per process), data lands,
what it prints works as printed, Ctrl-C stops it all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from tests.conftest import count, query, wait_until
from tests.services import PROJECT, free_port

DEMO = PROJECT / "scripts" / "demo"


def process_start(pid: int) -> str | None:
    """The start time of a live process (tells it from a later one with the same pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def processes_started_by(launcher: int, state: Path) -> dict[int, str]:
    """The launcher's descendants, and whatever runs from its state folder (PostgreSQL, which
    pg_ctl detaches); pid to start time."""
    parents: dict[int, int] = {}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
            if str(state) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found[int(entry.name)] = ""
    level = {launcher}
    while level:
        level = {pid for pid, parent in parents.items() if parent in level}
        found.update(dict.fromkeys(level, ""))
    return {pid: start for pid in found if (start := process_start(pid)) is not None}


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
    return ""


def http(url: str, token: str | None = None, body: object = None) -> tuple[int, bytes]:
    """GET, or POST ``body`` as JSON: the status and the body of the answer."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def printed_line(printed: str, pattern: str) -> re.Match[str]:
    found = re.search(pattern, printed)
    assert found, f"no line matching {pattern!r} in:\n{printed}"
    return found


def meter_reading(voltage: float, at: datetime) -> bytes:
    return json.dumps(
        {"kwhConsumedAc": 0.1, "voltage": voltage, "timestamp": at.isoformat()}
    ).encode()


class Demo:
    """``./scripts/demo`` running in a subprocess with its own state folder and free ports."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="fleetgate-demo-"))
        self.state.chmod(0o755)  # PostgreSQL runs as the postgres user when we are root
        self.mqtt_port, self.mqtts_port = free_port(), free_port()
        self.pg_port, self.http_port = free_port(), free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "MQTT_URL", "ENROLMENT"}
        }
        env.update(
            FLEETGATE_STATE_DIR=str(self.state),
            FLEETGATE_MQTT_PORT=str(self.mqtt_port),
            FLEETGATE_MQTTS_PORT=str(self.mqtts_port),
            FLEETGATE_PG_PORT=str(self.pg_port),
            HTTP_HOST="127.0.0.1",
            HTTP_PORT=str(self.http_port),
            METRICS_PORT=str(free_port()),
        )
        self.database_url = f"postgresql://postgres@127.0.0.1:{self.pg_port}/fleetgate"
        self.output = self.state / "demo.out"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [str(DEMO), "--devices", "5", "--catch-up", "5"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a stray signal for the test run must not reach it
            )

    def printed(self) -> str:
        return self.output.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in processes_started_by(self.process.pid, self.state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def demo() -> Iterator[Demo]:
    running = Demo()
    try:
        yield running
    finally:
        running.close()


SIMULATED = [f"{kind}/{prefix}-000{n}" for n in range(1, 6)
             for kind, prefix in (("meter", "MTR"), ("vehicle", "EV"))]  # fmt: skip


@pytest.mark.timeout(180)
async def test_demo_runs_the_stack_secured_and_stops_everything_on_sigint(demo: Demo) -> None:
    async def running() -> bool:
        assert demo.process.poll() is None, f"demo exited:\n{demo.printed()}"
        return "fleetgate demo is running" in demo.printed()

    await wait_until(running, 90, "the demo's summary")  # includes a first pip install
    printed = demo.printed()
    for client in ("mosquitto_sub", "mosquitto_pub"):  # the demo installs them when it may
        assert shutil.which(client), f"{client} is missing: apt-get install -y mosquitto-clients"
    api = f"http://127.0.0.1:{demo.http_port}"
    admin = printed_line(printed, r"admin token (\S+)")[1]
    engineer = printed_line(printed, r"mosquitto_sub -h 127\.0\.0\.1 .*-t 'fleet/alerts/#' -v")[0]
    ca_file = printed_line(printed, rf"-p {demo.mqtts_port} --cafile (\S+) -u demo-engineer ")[1]
    tls = ssl.create_default_context(cafile=ca_file)

    # The simulated devices are registered (with their nominal voltages) and report in closed
    # enrolment, each logged in as itself over TLS; nobody gets in without a login.
    async def every_device_reported() -> bool:
        sql = """SELECT count(*) FROM (SELECT received_at FROM meter UNION ALL
                 SELECT received_at FROM vehicle) d WHERE received_at IS NOT NULL"""
        return await count(demo.database_url, sql) == 10

    await wait_until(every_device_reported, 60, "readings of every simulated device")
    assert await query(
        demo.database_url,
        "SELECT nominal_voltage_v, count(*) FROM meter WHERE site = 'simulator'"
        " AND secret_hash IS NOT NULL GROUP BY 1 ORDER BY 1",
    ) == [(230.0, 1), (400.0, 4)]
    assert "gateway    closed enrolment" in printed
    broker_log = (demo.state / "mosquitto" / "mosquitto.log").read_text(errors="replace")
    for username in SIMULATED:
        assert f"(p2, c1, k30, u'{username}')" in broker_log, f"{username} never logged in"
    for port, context in ((demo.mqtt_port, None), (demo.mqtts_port, tls)):
        with pytest.raises(aiomqtt.MqttError, match=r"(?i)not authori"):
            async with aiomqtt.Client("127.0.0.1", port, tls_context=context):
                pass

    # The admin token manages the registry: a device of our own, with its secret ...
    status, body = await asyncio.to_thread(http, f"{api}/v1/devices?kind=meter", admin)
    assert status == 200, body
    assert {d["id"] for d in json.loads(body)["devices"]} >= {f"MTR-000{n}" for n in range(1, 6)}
    device = f"EV-DEMO-{uuid.uuid4().hex[:6]}"
    control = f"MTR-DEMO-{uuid.uuid4().hex[:6]}"  # no nominal voltage: judged against 230 V
    secrets = {}
    for kind, name in (("vehicle", device), ("meter", control)):
        status, body = await asyncio.to_thread(
            http, f"{api}/v1/devices", admin, {"kind": kind, "id": name}
        )
        assert status == 201, body
        secrets[name] = json.loads(body)["secret"]

    # ... publishes with the printed mosquitto_pub line, and the engineer's printed
    # mosquitto_sub line gets the alert its hot battery raises.
    subscriber = await asyncio.create_subprocess_exec(
        *shlex.split(engineer), "-W", "60", stdout=asyncio.subprocess.PIPE
    )
    try:
        publish = printed_line(printed, r"mosquitto_pub .*")[0]
        publish = publish.replace("EV-MINE", device).replace("'<its secret>'", secrets[device])
        publish = publish.replace('batteryTemp\\":30', 'batteryTemp\\":70')
        assert 'batteryTemp\\":70' in publish, publish
        await asyncio.sleep(1.0)  # the subscription is made
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", publish], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr

        async def ours_stored() -> bool:
            sql = "SELECT soc, battery_temp FROM vehicle WHERE name = %s"
            return await query(demo.database_url, sql, device) == [(50.0, 70.0)]

        await wait_until(ours_stored, 30, f"the reading of {device}")
        assert subscriber.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await subscriber.stdout.readline()).decode()
                assert line, "the engineer's mosquitto_sub ended"
                if line.startswith(f"fleet/alerts/vehicle/{device}/batteryOverTemp "):
                    break
    finally:
        with contextlib.suppress(ProcessLookupError):
            subscriber.kill()
        await subscriber.wait()

    # The API answers, and the curl line printed works as printed.
    health = await asyncio.to_thread(http, f"{api}/health")
    assert health[0] == 200
    curl = printed_line(printed, r"curl -H 'Authorization: Bearer (\S+)' (http://\S+)")
    status, body = await asyncio.to_thread(http, curl[2], curl[1])
    assert status == 200, body
    assert isinstance(json.loads(body)["efficiency"], float), f"{body}\n{printed}"

    # After replaying the last 24 h, the simulator goes on in real time.
    async def live() -> bool:
        return "now live" in demo.printed()

    await wait_until(live, 30, "the simulator to go live")

    # No meter raised a false voltage alert (four of them are 400 V meters): once our control
    # meter's has been raised, every simulated reading before it has been judged.
    now = datetime.now(UTC).replace(microsecond=0)
    async with aiomqtt.Client(
        "127.0.0.1",
        demo.mqtts_port,
        username=f"meter/{control}",
        password=secrets[control],
        tls_context=tls,
    ) as meter:
        for at in (now - timedelta(minutes=3), now):
            await meter.publish(f"fleet/meter/{control}", meter_reading(400, at), qos=1)

    async def control_raised() -> bool:
        sql = "SELECT count(*) FROM alert WHERE rule = 'voltageOutOfRange' AND device_name = %s"
        return await count(demo.database_url, sql, control) == 1

    await wait_until(control_raised, 30, "the control meter's voltage alert")
    assert await query(
        demo.database_url, "SELECT device_name FROM alert WHERE rule = 'voltageOutOfRange'"
    ) == [(control,)]

    started = processes_started_by(demo.process.pid, demo.state)
    names = " ".join(command_line(pid) for pid in started)
    for expected in ("mosquitto", "postgres", "-m gateway ", "gateway.broker_sync run"):
        assert expected in f"{names} ", f"{expected} not among the demo's processes: {names}"

    demo.process.send_signal(signal.SIGINT)
    code = await asyncio.to_thread(demo.process.wait, 25)
    assert code == 0, demo.printed()
    assert "everything stopped." in demo.printed()
    assert "did not stop" not in demo.printed()  # each in time, none killed
    left = {pid: command_line(pid) for pid, start in started.items() if process_start(pid) == start}
    assert not left, f"still running after the demo stopped: {left}"
