"""The benchmark's moving parts: the gateway as a subprocess, publisher processes started together,
committed-reading counts, and what /proc says about a process (CPU time, peak memory)."""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from fleetgate_tools.simulate import Pace, Publisher, Stats, live_stream, publish_messages
from fleetgate_tools.simulated_fleet import Fleet, FleetProfile, Message, rfc3339
from gateway.settings import MqttAddress

PROJECT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

COMMITTED_READINGS = """
SELECT (SELECT coalesce(sum(readings), 0) FROM meter_hourly)
     + (SELECT coalesce(sum(readings), 0) FROM vehicle_hourly)
"""


# A probe reported: with closed enrolment the probes are registered beforehand, so their rows
# exist from the start; received_at is set by the gateway when a reading arrives.
PROBE_REPORTED = "SELECT count(*) FROM meter WHERE name LIKE 'PROBE-%%' AND received_at IS NOT NULL"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}"


def print_figures(
    title: str,
    setting: str,
    rows: list[tuple[str, str, str]],
    target_width: int,
    *,
    method: str,
    notes: Iterable[str],
) -> None:
    """A benchmark's report: its title and when, the machine and ``setting``, then one line per
    (figure, measured, target) under a header, the method and the notes."""
    width = max(len(what) for what, _, _ in rows)
    print(f"fleetgate {title} benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {machine()}; {setting}")
    print(f"{'figure':<{width}} | {'target':<{target_width}} | measured")
    print(f"{'-' * width}-+-{'-' * target_width}-+-{'-' * 40}")
    for what, measured, target in rows:
        print(f"{what:<{width}} | {target:<{target_width}} | {measured}")
    print()
    print(method)
    for note in notes:
        print(f"- {note}")


def _best_of_three_ms(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - began) * 1000)
    return best


def loop_ms() -> float:
    """How fast this (shared, noisy) machine is right now: the best of three runs of the same
    pure-Python loop, in ms (lower is faster). Printed beside figures taken at the same time, so
    that runs can be compared; on the 2-core machine it read 75 ms and 122 ms minutes apart."""

    def count() -> int:
        total = 0
        for number in range(3_000_000):
            total += number
        return total

    return _best_of_three_ms(count)


def database_ms(url: str) -> float:
    """loop_ms for the database: the best of three runs of one statement that only counts, in ms
    (lower is faster). The Python loop does not show what slows PostgreSQL alone."""
    with psycopg.connect(url) as conn:
        return _best_of_three_ms(
            lambda: conn.execute("SELECT count(*) FROM generate_series(1, 2000000)").fetchone()
        )


def proc_status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmHWM, VmRSS) in kB; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU use of named groups of processes between ``start()`` and ``stop()``, as % of a core.
    Each group is a function giving its pids at the time, so that processes started meanwhile
    (a new gateway's database connections) are counted from their start."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]):
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._started = 0.0
        self.seconds: dict[str, float] = {}  # CPU seconds of each group, after stop()

    def _per_pid(self, name: str) -> dict[int, float]:
        return {pid: cpu_seconds([pid]) for pid in self.groups[name]()}

    def start(self) -> None:
        self._started = time.monotonic()
        self._before = {name: self._per_pid(name) for name in self.groups}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._started
        percent = {}
        for name in self.groups:
            before = self._before[name]
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in self._per_pid(name).items())
            self.seconds[name] = used
            percent[name] = 100 * used / wall
        return percent


class ServiceProcess:
    """``python ARGV...`` run from the project, its output in ``log``; stopped with SIGTERM (the
    project's services drain on it), killed after 60 s."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.argv],
                env=self.env,
                cwd=PROJECT,
                stdout=log,
                stderr=log,
            )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")


class GatewayProcess(ServiceProcess):
    """``python -m gateway`` with the benchmark's settings; stopped with SIGTERM (drains)."""

    def __init__(
        self,
        database_url: str,
        mqtt_url: str,
        client_id: str,
        log: Path,
        settings: dict[str, str] | None = None,
    ):
        env = {
            **(settings or {}),
            **os.environ,
            "DATABASE_URL": database_url,
            "MQTT_URL": mqtt_url,
            "MQTT_CLIENT_ID": client_id,
            "METRICS_PORT": "0",
            "LOG_LEVEL": "WARNING",
            "ENROLMENT": "open",  # the benchmark's publishers are not registered devices
        }
        # argv: bench.drain --tracemalloc runs it under a wrapper
        super().__init__("gateway", ["-m", "gateway"], env, log)


class Database:
    """A connection to the benchmark's database for counting and measuring."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url, autocommit=True)

    def value(self, sql: str, *params: Any) -> Any:
        row = self.conn.execute(sql.encode(), params).fetchone()
        assert row is not None
        return row[0] if len(row) == 1 else row

    def committed(self) -> int:
        return int(self.value(COMMITTED_READINGS))

    def close(self) -> None:
        self.conn.close()


def wait_for_gateway(gateway: GatewayProcess, db: Database, mqtt_url: str) -> None:
    """Publish probe readings until one is committed: the gateway is subscribed and writing."""
    publisher = Publisher(MqttAddress.parse(mqtt_url), f"bench-probe-{os.getpid()}")
    publisher.connect()
    try:
        for attempt in itertools.count():
            gateway.check_alive()
            name = f"PROBE-{attempt}"
            payload = (
                f'{{"kwhConsumedAc":0,"voltage":230,"timestamp":"{rfc3339(datetime.now(UTC))}"}}'
            )
            publisher.publish(
                Message(f"fleet/meter/{name}", payload.encode(), 1, datetime.now(UTC))
            )
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                publisher.service(0.1)
                try:
                    if db.value(PROBE_REPORTED):
                        return
                except psycopg.errors.UndefinedTable:
                    pass  # the gateway has not applied the schema yet
            if attempt > 60:
                raise TimeoutError("the gateway did not commit a probe reading within 60 s")
    finally:
        publisher.disconnect()


@dataclasses.dataclass(frozen=True, slots=True)
class PublisherJob:
    """One publisher process's share: its devices, how many messages and how fast."""

    mqtt_url: str
    first_device: int
    devices: int
    count: int | None = None
    duration_s: float | None = None
    array: int = 1
    rate: float | None = None  # messages/s of this process; None: as fast as acks allow
    live_timestamps: bool = False
    window: int = 1000
    hostile_every: int = 0  # after every this many messages, one hostile one (0: none)


# What a broken or hostile device sends: 10,000 invalid elements in 30 KB, or nesting 5,000 deep.
JUNK_ARRAY: bytes = b"[" + b",".join([b"{}"] * 10_000) + b"]"
NESTED: bytes = b"[" * 5000 + b"]" * 5000


def with_hostile(messages: list[Message], every: int) -> list[Message]:
    """``messages`` with a hostile message on the same device's topic after every ``every``:
    junk arrays and deep nesting in turns."""
    mixed: list[Message] = []
    for number, message in enumerate(messages, 1):
        mixed.append(message)
        if number % every == 0:
            payload = JUNK_ARRAY if (number // every) % 2 else NESTED
            mixed.append(Message(message.topic, payload, 0, message.at))
    return mixed


def job_profile(job: PublisherJob) -> FleetProfile:
    """The fleet a publisher job simulates: its devices (to register them) and its readings."""
    return FleetProfile(
        devices=job.devices,
        first_device=job.first_device,
        array=job.array,
        duplicate_share=0.0,
        late_share=0.0,
        malformed_share=0.0,
        silent_share=0.0,
        seed=job.first_device,
    )


def _run_job(job: PublisherJob, ready: Any, go: Any, results: Any) -> None:
    profile = job_profile(job)
    now = datetime.now(UTC).replace(microsecond=0)
    fleet = Fleet(profile, now - profile.time_for(job.count or 0) - timedelta(minutes=1))
    # Generated before the clock starts, so that the figures are the pipeline's, not generation's.
    messages: Iterable[Message] = (
        live_stream(fleet)
        if job.live_timestamps
        else list(itertools.islice(fleet.stream(), job.count))
    )
    count = job.count
    if job.hostile_every and isinstance(messages, list):
        messages = with_hostile(messages, job.hostile_every)
        count = len(messages)
    publisher = Publisher(MqttAddress.parse(job.mqtt_url), f"bench-pub-{os.getpid()}", job.window)
    publisher.connect()
    ready.put(os.getpid())
    go.wait()
    stats = publish_messages(
        publisher,
        messages,
        Pace(speed=None, rate=job.rate),
        sim_start=fleet.start,
        count=count,
        duration_s=job.duration_s,
    )
    publisher.disconnect()
    results.put(stats)


class Publishers:
    """Publisher processes that generate their messages, connect, then start at one signal."""

    def __init__(self, jobs: list[PublisherJob]):
        context = multiprocessing.get_context("spawn")
        self._ready = context.Queue()
        self._results = context.Queue()
        self._go = context.Event()
        self.processes = [
            context.Process(target=_run_job, args=(job, self._ready, self._go, self._results))
            for job in jobs
        ]
        self.pids: list[int] = []

    def __enter__(self) -> Publishers:
        for process in self.processes:
            process.start()
        try:
            self.pids = [self._next_ready() for _ in self.processes]
        except BaseException:
            self.__exit__()
            raise
        return self

    def _next_ready(self, timeout_s: float = 600) -> int:
        """The pid of the next publisher that has connected; an error as soon as one exits
        before that (it failed: say, it could not import or connect), not after the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return int(self._ready.get(timeout=1.0))
            except queue.Empty:
                for process in self.processes:
                    if process.exitcode is not None:
                        raise RuntimeError(
                            f"publisher process {process.pid} exited with {process.exitcode} "
                            "before it was ready (its traceback is on stderr above)"
                        ) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no publisher ready within {timeout_s} s") from None

    def go(self) -> float:
        started = time.monotonic()
        self._go.set()
        return started

    def results(self, timeout_s: float = 600) -> list[Stats]:
        return [self._results.get(timeout=timeout_s) for _ in self.processes]

    def __exit__(self, *_: object) -> None:
        for process in self.processes:
            process.join(timeout=0 if not self._go.is_set() else 10)
            if process.is_alive():
                process.kill()
                process.join()


def total_rate(stats: list[Stats]) -> float:
    longest = max(s.elapsed_s for s in stats)
    return sum(s.sent for s in stats) / longest if longest else 0.0
