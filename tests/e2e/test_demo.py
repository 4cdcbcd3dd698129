"""``./scripts/demo`` as a user runs it: the stack comes up secured (registered devices, each
logged in as itself over TLS, no anonymous clients, a database login per process), data lands,
what it prints works as printed, the ``curl`` examples of the README and docs/http-api.md answer
as written, Ctrl-C stops it all. One demo serves the module's tests, in order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
import psycopg
import pytest

from fleetgate_tools.private_services import PrivatePostgres
from tests.services import PROJECT, free_port
from tests.support import count, query, wait_until

DEMO = PROJECT / "scripts" / "demo"
# The pages whose examples run against the demo, in this order (the README's walk-through
# registers devices that later examples may use).
DOC_PAGES = (PROJECT / "README.md", PROJECT / "docs" / "http-api.md")


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


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """One demo for the module: its last test stops it with Ctrl-C."""
    running = Demo()
    try:
        yield running
    finally:
        running.close()


async def wait_for_summary(demo: Demo) -> str:
    """What the demo printed, once it says it is running."""

    async def running() -> bool:
        assert demo.process.poll() is None, f"demo exited:\n{demo.printed()}"
        return "fleetgate demo is running" in demo.printed()

    await wait_until(running, 90, "the demo's summary")  # includes a first pip install
    return demo.printed()


@dataclasses.dataclass(frozen=True, slots=True)
class CurlExample:
    where: str  # page:line
    command: str  # as written, without its comment
    expected: int | None  # a status written as "# 409" after it; None: any 2xx

    def answered(self, status: int) -> bool:
        return status == self.expected if self.expected else 200 <= status < 300


_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
_SET_FROM_BANNER = re.compile(r"^(API|TOKEN|AUTH)=")
_COMMENT = re.compile(r"\s+#\s*(.*)$")  # the examples' JSON holds no " #"
_STATUS_ONLY = "-sS -o /dev/null -w '%{http_code}\\n' --max-time 20"


def doc_examples(pages: tuple[Path, ...]) -> tuple[list[str], list[CurlExample]]:
    """The shell lines of the pages' ``sh`` blocks that the test runs, in order (variables set
    by the examples, and each ``curl`` changed to print only its status), and the curl
    examples. Other commands (``./scripts/demo``, ``python -m ...``) are not run."""
    lines: list[str] = []
    examples: list[CurlExample] = []
    for page in pages:
        text = page.read_text()
        for block in _SH_BLOCK.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            joined = block[1].replace("\\\n", " ")
            for number, line in enumerate(joined.splitlines(), first):
                if _ASSIGNMENT.match(line) and not _SET_FROM_BANNER.match(line):
                    lines.append(line)
                elif line.startswith("curl "):
                    comment = _COMMENT.search(line)
                    command = line[: comment.start()] if comment else line
                    status = re.match(r"\d{3}\b", comment[1]) if comment else None
                    examples.append(
                        CurlExample(
                            f"{page.relative_to(PROJECT)}:{number}",
                            command,
                            int(status[0]) if status else None,
                        )
                    )
                    lines.append(command.replace("curl ", f"curl {_STATUS_ONLY} ", 1))
    return lines, examples


def test_the_doc_examples_are_found_with_the_status_they_expect() -> None:
    lines, examples = doc_examples(DOC_PAGES)
    for page in DOC_PAGES:
        found = [e for e in examples if e.where.startswith(str(page.relative_to(PROJECT)))]
        assert len(found) >= 5, f"{page}: the test finds no curl examples (a ```sh block?)"
    assert any(e.expected == 409 for e in examples), "the 409 of a taken meter is shown"
    assert not any("#" in e.command for e in examples)
    assert not any(line.startswith(("API=", "TOKEN=", "AUTH=")) for line in lines)


@pytest.mark.timeout(180)
async def test_every_curl_example_of_the_docs_answers_as_written(demo: Demo) -> None:
    """The README's and docs/http-api.md's curl lines, run in order against a fresh demo with
    the API address and admin token of its banner, each answer 2xx (or the status they say)."""
    printed = await wait_for_summary(demo)
    admin = printed_line(printed, r"admin token (\S+)")[1]
    lines, examples = doc_examples(DOC_PAGES)
    script = "\n".join(
        [
            "set -u",
            f"API=http://127.0.0.1:{demo.http_port} TOKEN={admin}",
            'AUTH="Authorization: Bearer $TOKEN"',
            *lines,
        ]
    )
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], capture_output=True, text=True, check=False
    )
    statuses = done.stdout.split()
    assert len(statuses) == len(examples), f"the examples stopped early:\n{done.stderr}"
    wrong = [
        f"{example.where}: {status} to {example.command}"
        for example, status in zip(examples, statuses, strict=True)
        if not example.answered(int(status))
    ]
    assert not wrong, "\n".join(wrong)


SIMULATED = [f"{kind}/{prefix}-000{n}" for n in range(1, 6)
             for kind, prefix in (("meter", "MTR"), ("vehicle", "EV"))]  # fmt: skip


def test_a_database_in_a_given_folder_is_kept_between_runs() -> None:
    """The demo's PostgreSQL in .state/ (fleetgate_tools.private_services): a second run finds
    the first one's data, on the port it recorded unless given another, and leaves it there."""
    # Not pytest's tmp_path: PostgreSQL runs as the postgres user when we are root, and it
    # must reach the folder.
    with tempfile.TemporaryDirectory(prefix="fleetgate-kept-") as state:
        Path(state).chmod(0o755)
        root = Path(state) / "postgres"
        with PrivatePostgres(root) as first, psycopg.connect(first.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        again = PrivatePostgres(root)
        assert again.port == first.port
        assert again.initialised
        assert not again.running()
        with PrivatePostgres(root, free_port()) as moved, psycopg.connect(moved.url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
        assert (root / "data" / "PG_VERSION").exists()


# Last in the module: it stops the demo the other tests use.
@pytest.mark.timeout(180)
async def test_demo_runs_the_stack_secured_and_stops_everything_on_sigint(demo: Demo) -> None:
    printed = await wait_for_summary(demo)
    # It says when the replay of the last 24 h ends (or that it has), and which fleet it is.
    assert re.search(r"replay     of the last 24 h (ends at about .* \(in \d+ s\)|done)", printed)
    assert "chargers and their vehicles (seed 1)" in printed
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
        sql = """SELECT count(*) FROM (SELECT name, received_at FROM meter UNION ALL
                 SELECT name, received_at FROM vehicle) d
                 WHERE received_at IS NOT NULL AND name ~ '^(MTR|EV)-000[1-5]$'"""
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
        return "the 24 h figures are complete; now live, the same fleet (seed 1)" in demo.printed()

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
