"""``python -m bench.ingest``: end-to-end ingest figures of the gateway on this machine.

Private Mosquitto and PostgreSQL (tests/services.py), the gateway as a subprocess, publishers in
separate processes. Prints one table; see bench/README.md for the method and latest figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench.c_publishers import WINDOW, CPublishers, fleet_payloads
from bench.harness import (
    CpuMeter,
    Database,
    GatewayProcess,
    PublisherJob,
    Publishers,
    children_of,
    machine,
    print_figures,
    proc_status_kb,
    wait_for_gateway,
)
from bench.timeline import STALL_S, watch
from tests.services import Mosquitto, Postgres


@dataclasses.dataclass(frozen=True, slots=True)
class Scale:
    messages: int  # (a) and (e)
    array_messages: int  # (b), of ARRAY readings each
    latency_s: float  # (c)
    backlog: int  # (d)
    devices: int  # per publisher process


ARRAY = 100
LATENCY_RATE = 1000.0


def publisher_jobs(
    url: str, base: int, scale: Scale, total: int, processes: int, **options: object
) -> list[PublisherJob]:
    """``total`` messages split over ``processes`` publishers, each with its own devices."""
    return [
        PublisherJob(
            url,
            first_device=base + number * scale.devices,
            devices=scale.devices,
            count=total // processes,
            **options,  # type: ignore[arg-type]
        )
        for number in range(processes)
    ]


@dataclasses.dataclass(slots=True)
class Bench:
    """The services, the gateway and the figures gathered so far."""

    args: argparse.Namespace
    scale: Scale
    postgres: Postgres
    mosquitto: Mosquitto
    gateway: GatewayProcess
    db: Database | None = None
    logs: Path = Path()
    rows: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    ceiling_rate: float = 0.0
    notes_profiled: bool = False

    def profile(self, label: str) -> subprocess.Popen[bytes] | None:
        """With --profile S: py-spy records the gateway for S seconds of this phase (raw
        folded stacks in the logs folder), once, in the first phase that asks."""
        if not self.args.profile or self.notes_profiled:
            return None
        self.notes_profiled = True
        out = self.logs / "gateway-profile.txt"
        self.notes.append(f"py-spy profile of the gateway during {label}: {out}")
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
             str(self.gateway.pid), "--duration", str(int(self.args.profile)), "--rate", "250",
             "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def row(self, what: str, measured: str, target: str = "") -> None:
        self.rows.append((what, measured, target))
        print(f"  {what}: {measured}", file=sys.stderr, flush=True)

    def cpu(self, publishers: list[int]) -> CpuMeter:
        groups = {
            "publishers": lambda: publishers,
            "mosquitto": lambda: [self.mosquitto_pid],
            "postgres": lambda: children_of(self.postmaster_pid),
        }
        if self.gateway.process is not None:
            groups["gateway"] = lambda: [self.gateway.pid]
        return CpuMeter(groups)

    @property
    def mosquitto_pid(self) -> int:
        assert self.mosquitto.process is not None
        return self.mosquitto.process.pid

    @property
    def postmaster_pid(self) -> int:
        return int((self.postgres.datadir / "postmaster.pid").read_text().split()[0])

    def publishers(self, base: int, total: int, **options: object) -> Publishers:
        processes = self.args.publishers
        return Publishers(
            publisher_jobs(self.mosquitto.url, base, self.scale, total, processes, **options)
        )


def cpu_note(phase: str, percent: dict[str, float]) -> str:
    shares = ", ".join(f"{name} {value:.0f}%" for name, value in percent.items())
    return f"CPU during {phase} (100% = one core): {shares}"


def reap(process: subprocess.Popen[bytes], deadline: float) -> float:
    """Wait for the process to exit; its CPU seconds (from wait4, as it leaves /proc)."""
    while time.monotonic() < deadline:
        pid, _, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = 0
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.005)
    raise TimeoutError("mosquitto_sub did not receive every message in time")


C_TOPICS = 20  # one mosquitto_pub per topic: 10 chargers, a meter and a vehicle each


def c_publishers(bench: Bench, base: int) -> CPublishers:
    """C publishers of (e) and (a): the phase's messages over C_TOPICS topics."""
    count = bench.scale.messages - bench.scale.messages % C_TOPICS
    payloads = fleet_payloads(base, C_TOPICS // 2, count)
    return CPublishers(bench.mosquitto.port, bench.logs / f"c-publishers-{base}", payloads)


def per_100k(seconds: dict[str, float], count: int) -> str:
    return ", ".join(f"{name} {value * 100_000 / count:.2f} s" for name, value in seconds.items())


def ceiling(bench: Bench) -> None:
    """(e) The same stream into the C client: what broker + C publishers deliver."""
    publishers = c_publishers(bench, 400_000)
    count = publishers.count
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(bench.mosquitto.port), "-q", "1",
         "-t", "fleet/#", "-C", str(count), "-i", f"bench-ceiling-{uuid.uuid4().hex[:6]}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # let mosquitto_sub subscribe
        meter = CpuMeter({"mosquitto": lambda: [bench.mosquitto_pid]})
        meter.start()
        started = publishers.go()
        sent_s = publishers.wait()
        sub_cpu_s = reap(sub, started + STALL_S + count / 1000)
        elapsed = time.monotonic() - started
        percent = meter.stop()
        percent["mosquitto_pub"] = 100 * publishers.cpu_s / elapsed
        percent["mosquitto_sub"] = 100 * sub_cpu_s / elapsed
        bench.notes.append(cpu_note("(e)", percent))
    finally:
        publishers.close()
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    bench.ceiling_rate = count / elapsed
    seconds = {"mosquitto_sub": sub_cpu_s, "broker": meter.seconds["mosquitto"]}
    bench.row(
        "(e) ceiling: C publishers -> broker -> mosquitto_sub -q 1",
        f"{bench.ceiling_rate:,.0f} msg/s ({count:,} msgs, {C_TOPICS} mosquitto_pub -q 1 "
        f"-M {WINDOW} sent in {sent_s:.1f} s); CPU per 100k: {per_100k(seconds, count)}",
    )


def single_readings(bench: Bench, label: str = "(a)", base: int = 1) -> float:
    """(a) Sustained single-reading QoS 1 ingest from the C publishers, published -> committed;
    its share of (e)'s ceiling and the CPU per 100,000 messages of gateway, PostgreSQL, broker."""
    assert bench.db is not None
    publishers = c_publishers(bench, base)
    count = publishers.count
    baseline = bench.db.committed()
    meter = CpuMeter(
        {
            "gateway": lambda: [bench.gateway.pid],
            "postgres": lambda: children_of(bench.postmaster_pid),
            "broker": lambda: [bench.mosquitto_pid],
        }
    )
    spy = bench.profile(label)
    try:
        meter.start()
        started = publishers.go()
        drain = watch(bench.db, baseline, count, started, pid=bench.gateway.pid)
        publishers.wait()
        bench.notes.append(cpu_note(label, meter.stop()))
    finally:
        publishers.close()
        if spy is not None:
            spy.wait(timeout=120)
    rate = drain.rate_between(0.1, 0.9)
    whole = drain.committed / drain.total_s if drain.total_s else 0.0
    share = f"{rate / bench.ceiling_rate:.2f} of (e)" if bench.ceiling_rate else "-"
    bench.row(
        f"{label}: single-reading QoS 1, published -> committed",
        f"{rate:,.0f} msg/s sustained (10%-90%), {share}; "
        f"{drain.committed:,}/{count:,} in {drain.total_s:.1f} s ({whole:,.0f}/s); "
        f"CPU per 100k: {per_100k(meter.seconds, count)}; "
        f"gateway VmHWM {drain.peak_rss_kb / 1024:,.0f} MB",
        ">= 0.6 of (e)",
    )
    return rate


HOSTILE_EVERY = 100  # 1 % of messages


def hostile_mix(bench: Bench, clean_rate: float) -> None:
    """(f) (a) again with 1 % hostile messages (10,000-element junk arrays and 5,000-deep nesting
    in turns, on the devices' own topics), on a freshly started gateway: the good readings'
    rate against (a)'s in this run, and the gateway's peak RSS."""
    assert bench.db is not None
    restart_gateway(bench, alerts=True)  # so that VmHWM is this phase's
    count = bench.scale.messages
    baseline = bench.db.committed()
    with bench.publishers(700_000, count, hostile_every=HOSTILE_EVERY) as publishers:
        meter = bench.cpu(publishers.pids)
        meter.start()
        started = publishers.go()
        drain = watch(bench.db, baseline, count, started, pid=bench.gateway.pid)
        publishers.results()
        bench.notes.append(cpu_note("(f)", meter.stop()))
    rate = drain.rate_between(0.1, 0.9)
    bench.row(
        "(f) hostile mix: good readings with 1 % junk arrays and deep nesting",
        f"{rate:,.0f} msg/s sustained, {rate / clean_rate:.2f} of (a)'s {clean_rate:,.0f}; "
        f"{drain.committed:,}/{count:,} in {drain.total_s:.1f} s; "
        f"gateway VmHWM {drain.peak_rss_kb / 1024:,.0f} MB",
        ">= 0.80 of (a); < 300 MB",
    )


def restart_gateway(bench: Bench, *, alerts: bool) -> None:
    """SIGTERM the gateway (it drains), start it again with alerts on or off, wait until it
    commits a fresh probe."""
    assert bench.db is not None
    bench.gateway.stop()
    bench.gateway.env["ALERTS_ENABLED"] = "true" if alerts else "false"
    with psycopg.connect(bench.postgres.url, autocommit=True) as conn:
        conn.execute(b"DELETE FROM meter WHERE name LIKE 'PROBE-%'")  # so the wait sees a new one
    bench.gateway.start()
    wait_for_gateway(bench.gateway, bench.db, bench.mosquitto.url)


def single_readings_without_alerts(bench: Bench) -> None:
    """(a) again with ALERTS_ENABLED=false: what alert evaluation costs ingestion."""
    restart_gateway(bench, alerts=False)
    single_readings(bench, "(a) alerts off", base=500_000)
    restart_gateway(bench, alerts=True)


def arrays(bench: Bench) -> None:
    """(b) Readings/s when each message is an array of ARRAY readings."""
    assert bench.db is not None
    count = bench.scale.array_messages
    expected = count * ARRAY
    baseline = bench.db.committed()
    with bench.publishers(100_000, count, array=ARRAY) as publishers:
        meter = bench.cpu(publishers.pids)
        meter.start()
        started = publishers.go()
        drain = watch(bench.db, baseline, expected, started)
        publishers.results()
        bench.notes.append(cpu_note("(b)", meter.stop()))
    bench.row(
        f"(b) arrays of {ARRAY} readings",
        f"{drain.rate_between(0.1, 0.9):,.0f} readings/s sustained (10%-90%); "
        f"{drain.committed:,}/{expected:,} in {drain.total_s:.1f} s",
        ">= 100,000 readings/s",
    )


LATENCIES = """
SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY latency), max(latency)
FROM (
    SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) AS latency
    FROM meter_reading
    WHERE ts >= %s AND meter_id IN (SELECT meter_id FROM meter WHERE name LIKE %s)
    UNION ALL
    SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts)
    FROM vehicle_reading
    WHERE ts >= %s AND vehicle_id IN (SELECT vehicle_id FROM vehicle WHERE name LIKE %s)
) AS l
"""


def latency(bench: Bench) -> None:
    """(c) Publish-to-commit latency at a steady LATENCY_RATE msg/s."""
    assert bench.db is not None
    since = bench.db.value("SELECT now()")
    seconds = bench.scale.latency_s
    baseline = bench.db.committed()
    with Publishers(
        [
            PublisherJob(
                bench.mosquitto.url,
                first_device=200_000,
                devices=bench.scale.devices,
                duration_s=seconds,
                rate=LATENCY_RATE,
                live_timestamps=True,
            )
        ]
    ) as publishers:
        started = publishers.go()
        (stats,) = publishers.results()
        watch(bench.db, baseline, stats.sent, started)
    count, (p50, p99), worst = bench.db.value(LATENCIES, since, "MTR-2_____", since, "EV-2_____")
    bench.row(
        f"(c) publish -> commit latency at {LATENCY_RATE:,.0f} msg/s",
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms "
        f"({count:,} readings over {seconds:.0f} s, sent at {stats.sent / stats.elapsed_s:,.0f}/s)",
        "p99 < 250 ms",
    )


def backlog(bench: Bench) -> None:
    """(d) Queue a backlog for the stopped gateway's persistent session, then drain it."""
    assert bench.db is not None
    count = bench.scale.backlog
    bench.gateway.stop()
    baseline = bench.db.committed()
    with bench.publishers(300_000, count) as publishers:
        publishers.go()
        stats = publishers.results(timeout_s=3600)
    published = sum(s.acked for s in stats)
    queued_in = max(s.elapsed_s for s in stats)
    broker_rss = proc_status_kb(bench.mosquitto_pid, "VmRSS")
    bench.gateway.start()
    started = time.monotonic()
    meter = bench.cpu([])
    meter.start()
    drain = watch(bench.db, baseline, count, started, pid=bench.gateway.pid)
    bench.notes.append(cpu_note("(d) drain", meter.stop()))
    peak = max(drain.peak_rss_kb, proc_status_kb(bench.gateway.pid, "VmHWM"))
    bench.row(
        f"(d) drain a backlog of {count:,} (queued in {queued_in:.0f} s, broker RSS "
        f"{broker_rss / 1024:,.0f} MB)",
        f"{drain.committed:,} of {published:,} acked by the broker committed in "
        f"{drain.total_s:.1f} s from gateway start: {drain.committed / drain.total_s:,.0f} msg/s; "
        f"gateway peak RSS (VmHWM) {peak / 1024:,.0f} MB",
        "RSS < 150 MB",
    )


def integrity(bench: Bench, hostile: int) -> None:
    """Everything counted was stored once, and nothing was refused."""
    assert bench.db is not None
    rows = bench.db.value(
        "SELECT (SELECT count(*) FROM meter_reading) + (SELECT count(*) FROM vehicle_reading)"
    )
    dead = bench.db.value("SELECT count(*) FROM dead_letter")
    counted = bench.db.value("SELECT coalesce(sum(dead_letters), 0) FROM dead_letter_overflow")
    bench.row(
        "check: history rows / rollup readings / dead letters kept + counted",
        f"{rows:,} / {bench.db.committed():,} / {dead:,} + {counted:,}",
        f"equal / equal / {hostile:,} (the hostile ones)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled down: a smoke run (~1 min)")
    parser.add_argument("--backlog", type=int, help="(d) messages queued (default 1,000,000)")
    parser.add_argument("--messages", type=int, help="(a) and (e) messages (default 300,000)")
    parser.add_argument("--publishers", type=int, default=2, help="Python publisher processes")
    parser.add_argument(
        "--profile", type=float, help="py-spy records the gateway this many seconds of (a)"
    )
    parser.add_argument(
        "--only-a", action="store_true", help="(e) and (a) alerts on only: an A/B turn"
    )
    args = parser.parse_args(argv)
    if args.quick:
        scale = Scale(messages=60_000, array_messages=600, latency_s=5, backlog=60_000, devices=200)
    else:
        scale = Scale(300_000, array_messages=5_000, latency_s=30, backlog=1_000_000, devices=1000)
    scale = dataclasses.replace(
        scale,
        messages=args.messages or scale.messages,
        backlog=args.backlog if args.backlog is not None else scale.backlog,
    )
    logs = Path(tempfile.mkdtemp(prefix="fleetgate-bench-"))
    print(f"machine: {machine()}; logs in {logs}", file=sys.stderr)
    postgres = Postgres()
    mosquitto: Mosquitto | None = None
    bench: Bench | None = None
    try:
        # Exact commit times per row, for (c): pg_xact_commit_timestamp(xmin).
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            admin.execute(b"ALTER SYSTEM SET track_commit_timestamp = on")
        postgres.stop()
        postgres.start()
        mosquitto = Mosquitto()
        gateway = GatewayProcess(
            postgres.url, mosquitto.url, f"fleetgate-bench-{uuid.uuid4().hex[:6]}", logs / "gw.log"
        )
        bench = Bench(args, scale, postgres, mosquitto, gateway, logs=logs)
        ceiling(bench)  # first: the gateway's session must not exist yet, or it would queue
        gateway.start()
        bench.db = Database(postgres.url)
        wait_for_gateway(gateway, bench.db, mosquitto.url)
        clean_rate = single_readings(bench, "(a) alerts on")
        if not args.only_a:
            single_readings_without_alerts(bench)
            hostile_mix(bench, clean_rate)
            arrays(bench)
            latency(bench)
            backlog(bench)
        gateway.check_alive()
        integrity(bench, hostile=0 if args.only_a else bench.scale.messages // HOSTILE_EVERY)
    finally:
        if bench is not None:
            bench.gateway.stop()
            if bench.db is not None:
                bench.db.close()
        if mosquitto is not None:
            mosquitto.close()
        postgres.close()
    report(bench, scale)
    if not args.profile:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


METHOD = """method:
- (a), (e): 20 C publishers, mosquitto_pub -l -q 1 -M 200, one topic (device) each, their
  payloads written to files before the clock starts; (a)'s share is its rate over (e)'s.
  CPU per 100k: user + system seconds from /proc (postgres: every child of the postmaster;
  mosquitto_sub and mosquitto_pub from wait4) over the phase, per 100,000 messages.
- (a), (b), (d): committed readings = sum(readings) of meter_hourly + vehicle_hourly, written
  in the same transaction as the history rows; polled every 0.1 s. "Sustained" is the rate
  between 10% and 90% of the expected readings committed.
- (c): each reading's timestamp is the wall time at which it was handed to paho; its commit
  time is pg_xact_commit_timestamp(xmin) of its history row (track_commit_timestamp = on);
  latency = commit time - reading timestamp, over all readings of the phase.
- (d): the gateway is stopped (SIGTERM) once its persistent session and subscription exist;
  the backlog is published and acked by the broker, then the gateway is started again;
  peak RSS is VmHWM of the new gateway process.
- (e): mosquitto_sub -q 1 -C N > /dev/null, fed by the C publishers, run before the
  gateway's session exists; time from the publishers' start to its exit."""


def report(bench: Bench, scale: Scale) -> None:
    setting = f"{bench.args.publishers} publisher processes, {scale}"
    print_figures("ingest", setting, bench.rows, 21, method=METHOD, notes=bench.notes)


if __name__ == "__main__":
    sys.exit(main())
