"""``./scripts/demo`` as a user runs it: the stack comes up, data lands, Ctrl-C stops it all."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
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


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


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


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status), response.read()


class Demo:
    """``./scripts/demo`` running in a subprocess with its own state folder and free ports."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="fleetgate-demo-"))
        self.state.chmod(0o755)  # PostgreSQL runs as the postgres user when we are root
        self.mqtt_port, self.pg_port, self.http_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "MQTT_URL"}}
        env.update(
            FLEETGATE_STATE_DIR=str(self.state),
            FLEETGATE_MQTT_PORT=str(self.mqtt_port),
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


@pytest.mark.timeout(150)
async def test_demo_runs_the_stack_and_stops_everything_on_sigint(demo: Demo) -> None:
    async def running() -> bool:
        assert demo.process.poll() is None, f"demo exited:\n{demo.printed()}"
        return "fleetgate demo is running" in demo.printed()

    await wait_until(running, 90, "the demo's summary")  # includes a first pip install
    printed = demo.printed()
    assert f"mosquitto_sub -h 127.0.0.1 -p {demo.mqtt_port} -t 'fleet/alerts/#' -v" in printed

    # The simulator's readings land in the demo's database.
    if has_module("gateway.simulate"):

        async def simulated() -> bool:
            return await count(demo.database_url, "SELECT count(*) FROM vehicle_reading") > 0

        await wait_until(simulated, 60, "readings of the simulator")

    # So does a reading of our own, through the demo's broker and gateway.
    device = f"EV-DEMO-{uuid.uuid4().hex[:6]}"
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    payload = {"soc": 55, "kwhDeliveredDc": 1.25, "batteryTemp": 31, "timestamp": at.isoformat()}
    async with aiomqtt.Client("127.0.0.1", demo.mqtt_port, identifier=f"test-{device}") as client:
        await client.publish(f"fleet/vehicle/{device}", json.dumps(payload), qos=1)

    async def ours_stored() -> bool:
        rows = await query(demo.database_url, "SELECT soc, ts FROM vehicle WHERE name = %s", device)
        return rows == [(55.0, at)]

    await wait_until(ours_stored, 30, f"the reading of {device}")

    # The API answers, and the curl line printed works as printed.
    if has_module("http_api.__main__"):
        health = await asyncio.to_thread(http_get, f"http://127.0.0.1:{demo.http_port}/health")
        assert health[0] == 200
        curl = re.search(r"curl -H 'Authorization: Bearer (\S+)' (http://\S+)", printed)
        assert curl, f"no curl line with a token in:\n{printed}"
        status, body = await asyncio.to_thread(http_get, curl[2], curl[1])
        assert status == 200, body
        assert isinstance(json.loads(body)["efficiency"], float), f"{body}\n{printed}"

    # After replaying the last 24 h, the simulator goes on in real time.
    if has_module("gateway.simulate"):

        async def live() -> bool:
            return "now live" in demo.printed()

        await wait_until(live, 30, "the simulator to go live")

    started = processes_started_by(demo.process.pid, demo.state)
    names = " ".join(command_line(pid) for pid in started)
    for expected in ("mosquitto", "postgres", "-m gateway"):
        assert expected in names, f"{expected} not among the demo's processes: {names}"

    demo.process.send_signal(signal.SIGINT)
    code = await asyncio.to_thread(demo.process.wait, 25)
    assert code == 0, demo.printed()
    assert "everything stopped." in demo.printed()
    left = {pid: command_line(pid) for pid, start in started.items() if process_start(pid) == start}
    assert not left, f"still running after the demo stopped: {left}"
