"""Single-reading QoS 1 ingest through two stacks in turns, one with authentication on and one
with it off, in the same run: (3) of ``bench.devices``. Alternating rounds (on off, off on, ...)
cancel the drift of a shared machine's speed; each round's ratio compares neighbours."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import statistics
import sys
from datetime import UTC, datetime

import psycopg

from bench.harness import (
    CpuMeter,
    Database,
    GatewayProcess,
    PublisherJob,
    Publishers,
    job_profile,
    total_rate,
    wait_for_gateway,
)
from bench.timeline import watch
from fleetgate_tools.simulated_fleet import Fleet
from gateway.registry import register
from tests.services import Mosquitto

FIRST_DEVICE = 1_000_000  # device numbers of the first round; each round takes fresh ones


@dataclasses.dataclass(frozen=True, slots=True)
class Rounds:
    messages: int  # per side and round
    rounds: int
    fleet: int  # chargers (a meter and a vehicle each) per publisher process


@dataclasses.dataclass(slots=True)
class Side:
    """One half: a gateway (not started yet), its database and broker, a publisher URL per
    publisher process (each its own login where logins are client ids), and its rates."""

    label: str
    gateway: GatewayProcess
    database_url: str
    broker: Mosquitto
    publisher_urls: list[str]
    probe_url: str  # for wait_for_gateway
    db: Database | None = None
    dead_letters: int = 0
    rates: list[float] = dataclasses.field(default_factory=list)
    cpu: list[dict[str, float]] = dataclasses.field(default_factory=list)


async def register_fleets(database_url: str, jobs: list[PublisherJob]) -> None:
    """The publishers' devices, as an import registers them (both sides alike: only
    authentication and enrolment differ between them)."""
    start = datetime.now(UTC)  # the devices do not depend on it, only their readings do
    records = [d for job in jobs for d in Fleet(job_profile(job), start).devices()]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await register(conn, records)


def one_round(side: Side, rounds: Rounds, first_device: int) -> None:
    assert side.db is not None
    jobs = [
        PublisherJob(
            url,
            first_device=first_device + n * rounds.fleet,
            devices=rounds.fleet,
            count=rounds.messages // len(side.publisher_urls),
        )
        for n, url in enumerate(side.publisher_urls)
    ]
    asyncio.run(register_fleets(side.database_url, jobs))
    expected = sum(job.count or 0 for job in jobs)
    baseline = side.db.committed()
    broker = side.broker.process
    assert broker is not None
    with Publishers(jobs) as publishers:
        meter = CpuMeter({"mosquitto": lambda: [broker.pid], "gateway": lambda: [side.gateway.pid]})
        meter.start()
        started = publishers.go()
        drain = watch(side.db, baseline, expected, started, pid=side.gateway.pid)
        stats = publishers.results()
        side.cpu.append(meter.stop())
    if drain.committed != expected:
        raise RuntimeError(f"auth {side.label}: {drain.committed:,} of {expected:,} committed")
    rate = drain.rate_between(0.1, 0.9)
    side.rates.append(rate)
    print(
        f"  (3) auth {side.label}: {rate:,.0f} msg/s ({expected:,} in {drain.total_s:.1f} s, "
        f"publishers {total_rate(stats):,.0f}/s)",
        file=sys.stderr,
        flush=True,
    )


def in_turns(on: Side, off: Side, rounds: Rounds) -> None:
    """Both gateways started (each idle while the other side runs), then the rounds."""
    try:
        for side in (on, off):
            side.gateway.start()
            side.db = Database(side.database_url)
            wait_for_gateway(side.gateway, side.db, side.probe_url)
        processes = max(len(on.publisher_urls), len(off.publisher_urls))
        firsts = itertools.count(FIRST_DEVICE, processes * rounds.fleet)
        for number in range(rounds.rounds):
            for side in (on, off) if number % 2 == 0 else (off, on):
                one_round(side, rounds, next(firsts))
                side.gateway.check_alive()
        for side in (on, off):
            assert side.db is not None
            side.dead_letters = side.db.value("SELECT count(*) FROM dead_letter")
    finally:
        for side in (on, off):
            side.gateway.stop()
            if side.db is not None:
                side.db.close()


def figures(on: Side, off: Side) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The table's rows (what, measured, target) and the notes."""
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    for side in (on, off):
        rounds = ", ".join(f"{rate:,.0f}" for rate in side.rates)
        rows.append((
            f"(3) single-reading QoS 1, authentication {side.label}",
            f"{statistics.median(side.rates):,.0f} msg/s median (rounds: {rounds})",
            "",
        ))  # fmt: skip
        cpu = {name: statistics.median(c[name] for c in side.cpu) for name in side.cpu[0]}
        notes.append(
            f"CPU during (3) auth {side.label}, median of the rounds (100% = one core): "
            + ", ".join(f"{name} {value:.0f}%" for name, value in cpu.items())
        )
    ratios = [a / b for a, b in zip(on.rates, off.rates, strict=True)]
    rows.append((
        "(3) on / off",
        f"{statistics.median(ratios):.3f} median of the rounds' ratios "
        f"({', '.join(f'{r:.3f}' for r in ratios)})",
        "0.95-1.05",
    ))  # fmt: skip
    rows.append((
        "check: dead letters, on / off",
        f"{on.dead_letters:,} / {off.dead_letters:,}",
        "0 / 0",
    ))  # fmt: skip
    return rows, notes
