"""``python -m bench.replicas``: ingest rates of 1, 2 and 3 gateway replicas beside the ceiling
of the C publishers, in one run, measured as bench.ingest measures its (e) and (a).

Private Mosquitto (anonymous, as bench.ingest's) and PostgreSQL; the replicas are N
``python -m gateway`` processes with one environment and GATEWAY_SESSIONS broker sessions.
Prints one table; see bench/README.md for the method and latest figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench.harness import (
    CpuMeter,
    Database,
    GatewayProcess,
    children_of,
    machine,
    print_figures,
    proc_status_kb,
    wait_for_gateway,
)
from bench.ingest import Bench, Scale, c_publishers, ceiling, cpu_note
from bench.timeline import STALL_S, watch
from gateway.replicas import MAX_SESSIONS, namespace
from tests.services import Mosquitto, Postgres

REPLICAS = (1, 2, 3)
SESSIONS = 6  # held 6, 3 + 3 and 2 + 2 + 2: every replica count gets equal shares

# Session -> the replica holding its advisory lock (application_name: host-pid by default).
SESSION_OWNERS = """
SELECT l.objid::int, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid::bigint = %s AND l.objid < %s
"""

# History rows of the publishers' devices: the probes' meters are deleted between phases (so
# that each wait sees a fresh probe), their readings stay behind without a device.
PUBLISHED_ROWS = """
SELECT (SELECT count(*) FROM meter_reading JOIN meter USING (meter_id)
        WHERE meter.name NOT LIKE 'PROBE-%%')
     + (SELECT count(*) FROM vehicle_reading)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Phase:
    """What one phase of ``count`` replicas measured."""

    rate: float  # msg/s, 10 % to 90 % committed
    cpu_s: dict[str, float]  # CPU seconds per 100,000 messages, by process group
    peaks_mb: list[float]  # VmHWM per replica


@dataclasses.dataclass(slots=True)
class ReplicaRun:
    """bench.ingest's services and figures, and what the replica phases measured."""

    bench: Bench
    sessions: int
    phases: dict[int, list[Phase]] = dataclasses.field(default_factory=dict)  # by replicas
    sent: int = 0

    @property
    def client_id(self) -> str:
        return self.bench.gateway.env["MQTT_CLIENT_ID"]

    @property
    def db(self) -> Database:
        assert self.bench.db is not None
        return self.bench.db


def start_replicas(run: ReplicaRun, count: int) -> list[GatewayProcess]:
    """``count`` gateways with one environment, each logging to a file of its own."""
    bench = run.bench
    replicas = []
    for number in range(count):
        replica = GatewayProcess(
            bench.postgres.url,
            bench.mosquitto.url,
            run.client_id,
            bench.logs / f"gw-{count}-{number}.log",
            settings={"GATEWAY_SESSIONS": str(run.sessions)},
        )
        replica.start()
        replicas.append(replica)
    return replicas


def stop_replicas(replicas: list[GatewayProcess]) -> None:
    """SIGTERM to all at once (each drains and hands its sessions over), then reap each."""
    for replica in replicas:
        if replica.process is not None and replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)
    for replica in replicas:
        replica.stop()


def wait_until_balanced(
    run: ReplicaRun, replicas: list[GatewayProcess], timeout_s: float = 90
) -> None:
    """Every session owned and each replica holding an equal share; then a probe committed,
    so that the sessions are connected and writing before the clock starts."""
    ns = namespace(run.client_id) % 2**32  # pg_locks shows the key as an unsigned oid
    expected = [run.sessions // len(replicas)] * len(replicas)
    held: list[int] = []
    deadline = time.monotonic() + timeout_s
    while held != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(replicas)} replicas hold {held} sessions, not {expected}")
        for replica in replicas:
            replica.check_alive()
        time.sleep(0.2)
        rows = run.db.conn.execute(SESSION_OWNERS.encode(), (ns, MAX_SESSIONS)).fetchall()
        owners = [str(name) for _, name in rows]
        held = sorted(owners.count(name) for name in set(owners))
    with psycopg.connect(run.bench.postgres.url, autocommit=True) as conn:
        conn.execute(b"DELETE FROM meter WHERE name LIKE 'PROBE-%'")  # so the wait sees a new one
    wait_for_gateway(replicas[0], run.db, run.bench.mosquitto.url)


def replicas_phase(run: ReplicaRun, count: int, base: int) -> Phase:
    """(a)'s stream of C publishers into ``count`` fresh replicas, published -> committed: the
    rate, CPU per 100,000 messages and each one's VmHWM."""
    bench = run.bench
    label = f"{count} replica{'s' if count > 1 else ''}"
    replicas = start_replicas(run, count)
    try:
        wait_until_balanced(run, replicas)
        publishers = c_publishers(bench, base)
        messages = publishers.count
        baseline = run.db.committed()
        meter = CpuMeter(
            {
                "gateway": lambda: [replica.pid for replica in replicas],
                "postgres": lambda: children_of(bench.postmaster_pid),
                "broker": lambda: [bench.mosquitto_pid],
            }
        )
        try:
            meter.start()
            started = publishers.go()
            drain = watch(run.db, baseline, messages, started)
            publishers.wait()
            bench.notes.append(cpu_note(label, meter.stop()))
        finally:
            publishers.close()
        peaks_mb = [proc_status_kb(replica.pid, "VmHWM") / 1024 for replica in replicas]
        for replica in replicas:
            replica.check_alive()
    finally:
        stop_replicas(replicas)
    if drain.committed < messages:
        raise RuntimeError(
            f"{label}: {drain.committed:,} of {messages:,} committed, "
            f"then nothing for {STALL_S:.0f} s"
        )
    run.sent += messages
    phase = Phase(
        drain.rate_between(0.1, 0.9),
        {name: value * 100_000 / messages for name, value in meter.seconds.items()},
        peaks_mb,
    )
    print(
        f"  {label}: {phase.rate:,.0f} msg/s, CPU per 100k "
        + ", ".join(f"{name} {value:.2f} s" for name, value in phase.cpu_s.items()),
        file=sys.stderr,
        flush=True,
    )
    return phase


def report(run: ReplicaRun) -> None:
    """A row per replica count: medians over the rounds, and each round's ratio to 1 replica
    measured in the same round (the machine moves between rounds, much less within one)."""
    bench = run.bench
    ones = [phase.rate for phase in run.phases[1]]
    for count, phases in run.phases.items():
        rate = statistics.median(phase.rate for phase in phases)
        ratios = [phase.rate / one for phase, one in zip(phases, ones, strict=True)]
        cpu = {
            name: statistics.median(phase.cpu_s[name] for phase in phases)
            for name in phases[0].cpu_s
        }
        versus_one = (
            f"{statistics.median(ratios):.2f}x 1 replica (rounds "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
            + "); "
            if count > 1
            else ""
        )
        peak = max(max(phase.peaks_mb) for phase in phases)
        bench.row(
            f"{count} replica{'s' if count > 1 else ''}, {run.sessions // count} sessions each",
            f"{rate:,.0f} msg/s, {rate / bench.ceiling_rate:.2f} of (e); {versus_one}"
            "CPU per 100k: "
            + ", ".join(f"{name} {value:.2f} s" for name, value in cpu.items())
            + f"; VmHWM per replica <= {peak:,.0f} MB",
            ">= 1.3x 1 replica" if count == 2 else "",
        )


def integrity(run: ReplicaRun) -> None:
    """Once, at the end: every message sent is one history row, and nothing was refused."""
    rows = run.db.value(PUBLISHED_ROWS)
    dead = run.db.value("SELECT count(*) FROM dead_letter")
    counted = run.db.value("SELECT coalesce(sum(dead_letters), 0) FROM dead_letter_overflow")
    run.bench.row(
        "check: history rows / messages sent / dead letters kept + counted",
        f"{rows:,} / {run.sent:,} / {dead:,} + {counted:,}",
        "equal / equal / 0",
    )


METHOD = """method:
- (e): bench.ingest's ceiling, before any gateway session exists: 20 C publishers
  (mosquitto_pub -l -q 1 -M 200, one topic each, payloads in files written before the clock
  starts) into mosquitto_sub -q 1 -C N > /dev/null.
- N replicas: N python -m gateway processes, one environment (GATEWAY_SESSIONS, everything else
  bench.ingest's), started afresh for each N and stopped with SIGTERM after it; the clock starts
  once each holds an equal share of the sessions (pg_locks) and a probe is committed. The same
  C publishers' stream as (a), other devices each phase. Committed readings = sum(readings) of
  the hourly rollups, polled every 0.1 s; the rate is the one from 10% to 90% committed.
- Rounds: 1, 2 and 3 replicas in turns, --rounds times; each figure is the median over the
  rounds, and "x 1 replica" the median of each round's ratio to its own 1-replica phase.
- CPU per 100k: user + system seconds from /proc over the phase, per 100,000 messages; gateway
  summed over the replicas, postgres every child of the postmaster. VmHWM read at the phase's
  end, per replica."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument(
        "--messages", type=int, default=300_000, help="per replica count and for (e) (300,000)"
    )
    parser.add_argument("--sessions", type=int, default=SESSIONS, help="GATEWAY_SESSIONS (6)")
    parser.add_argument("--rounds", type=int, default=3, help="1, 2, 3 replicas in turns (3)")
    args = parser.parse_args(argv)
    if any(args.sessions % count for count in REPLICAS):
        parser.error(f"--sessions must be a multiple of each replica count {REPLICAS}")
    scale = Scale(args.messages, array_messages=0, latency_s=0, backlog=0, devices=0)
    logs = Path(tempfile.mkdtemp(prefix="fleetgate-bench-replicas-"))
    print(f"machine: {machine()}; logs in {logs}", file=sys.stderr)
    postgres = Postgres()
    mosquitto: Mosquitto | None = None
    run: ReplicaRun | None = None
    try:
        mosquitto = Mosquitto()
        # Never started: it holds the environment the replicas share (client id, logs).
        template = GatewayProcess(
            postgres.url, mosquitto.url, f"fleetgate-bench-{uuid.uuid4().hex[:6]}", logs / "gw.log"
        )
        bench = Bench(args, scale, postgres, mosquitto, template, logs=logs)
        run = ReplicaRun(bench, args.sessions)
        ceiling(bench)  # first: the replicas' sessions must not exist yet, or they would queue
        bench.db = Database(postgres.url)
        for round_ in range(args.rounds):
            for count in REPLICAS:
                phase = replicas_phase(run, count, base=1000 * (count + len(REPLICAS) * round_))
                run.phases.setdefault(count, []).append(phase)
        report(run)
        integrity(run)
    finally:
        if run is not None and run.bench.db is not None:
            run.bench.db.close()
        if mosquitto is not None:
            mosquitto.close()
        postgres.close()
    setting = (
        f"GATEWAY_SESSIONS={args.sessions}, {scale.messages:,} messages per phase,"
        f" {args.rounds} rounds"
    )
    print_figures("replicas", setting, bench.rows, 17, method=METHOD, notes=bench.notes)
    shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
