"""Latency of the HTTP API's analytics and status endpoints on a generated fleet, through real
HTTP and as the SQL alone, on a private PostgreSQL; then the API under load (bench/api_load.py):
dashboards polling the fleet view, and a greedy token next to a normal one.

Run: .venv/bin/python -m bench.api [--quick] [--keep] [--load-only]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from bench.api_data import Fleet, generate
from bench.api_load import (
    FULL_LOAD,
    QUICK_LOAD,
    LoadScale,
    Samples,
    greedy_next_to_normal,
    poll_fleet,
    read_tokens,
    start_api,
)
from bench.api_timing import Plan, explain, percentile, timed
from bench.harness import database_ms, loop_ms, machine
from gateway.database import open_pool
from gateway.settings import MqttAddress
from http_api import queries
from http_api.app import create_app
from http_api.fleet_queries import fleet_sums
from http_api.garbage_collection import tune_garbage_collection
from http_api.rollup_queries import build, vehicle_sums
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token
from http_api.views_analytics import PERFORMANCE_SQL, FleetPage
from tests.services import Mosquitto, Postgres, free_port


@dataclasses.dataclass(frozen=True, slots=True)
class Scale:
    devices: int
    requests: int  # per latency figure
    rounds: int  # 1-day vs 30-day pairs
    fleet_requests: int
    load: LoadScale


FULL = Scale(devices=10_000, requests=500, rounds=150, fleet_requests=30, load=FULL_LOAD)
QUICK = Scale(devices=1_000, requests=150, rounds=40, fleet_requests=4, load=QUICK_LOAD)


@dataclasses.dataclass(slots=True)
class Row:
    figure: str
    http: list[float]
    sql: list[float]
    target_ms: float | None
    on: str = "p99"  # which percentile the target is about

    def cells(self, where: str) -> list[str]:
        def ms(samples: list[float]) -> str:
            return f"{percentile(samples, 0.5):.2f} / {percentile(samples, 0.99):.2f}"

        if self.target_ms is None:
            target, verdict = "-", ""
        else:
            measured = percentile(self.http, 0.99 if self.on == "p99" else 1.0)
            target = f"{self.on} < {self.target_ms:g} ms"
            verdict = "met" if measured < self.target_ms else "MISSED"
        return [self.figure, ms(self.http), ms(self.sql), target, verdict, where]


class Bench:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        pool: AsyncConnectionPool,
        settings: ApiSettings,
    ) -> None:
        self.http = http
        self.settings = settings
        self.pool = pool

    async def get(self, path: str) -> None:
        async with self.http.get(path) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {await response.text()}")

    def http_calls(self, paths: list[str]) -> list[Callable[[], Awaitable[None]]]:
        return [lambda path=path: self.get(path) for path in paths]  # type: ignore[misc]

    # "SQL alone": what each handler asks the database, in the same order. The bearer token is
    # not looked up: the API caches it (TOKEN_CACHE_S) after the first request.
    async def performance_sql(self, name: str) -> None:
        now = datetime.now(UTC)
        await vehicle_sums(self.pool, name, (now - timedelta(hours=24), now), PERFORMANCE_SQL)

    async def fleet_sql(self, window: tuple[datetime, datetime] | None = None) -> None:
        if window is None:  # the default window, as the handler takes it: ending now
            now = datetime.now(UTC)
            window = (now - timedelta(hours=24), now)
        page = FleetPage(window, self.settings, self.settings.efficiency_good, 100)
        page_rows = await fleet_sums(self.pool, window, page.pick)
        page.add_page(page_rows)

    async def status_sql(self, kind: str, name: str) -> None:
        online_since = datetime.now(UTC) - timedelta(seconds=180)
        if kind == "vehicle":
            await queries.vehicle_status(self.pool, name, online_since, 45.0)
        else:
            await queries.meter_status(self.pool, name, online_since)

    async def both(
        self, figure: str, paths: list[str], sql: list[Callable[[], Awaitable[None]]], **row: Any
    ) -> Row:
        warm = min(50, len(paths))
        await timed(self.http_calls(paths[:warm]))
        await timed(sql[:warm])
        return Row(figure, await timed(self.http_calls(paths)), await timed(sql), **row)

    async def performance_plan(self, conn: psycopg.AsyncConnection[Any], vehicle: int) -> Plan:
        now = datetime.now(UTC)
        params = {"f": now - timedelta(hours=24), "t": now, "name": vehicle_name(vehicle)}
        plans = [await explain(conn, build(s, g, by_name=True), params) for s, g in PERFORMANCE_SQL]
        return plans[0] + plans[1] + plans[2]


def vehicle_name(number: int) -> str:
    return f"V-{number:05d}"


def meter_name(number: int) -> str:
    return f"M-{number:05d}"


async def measure(bench: Bench, fleet: Fleet, scale: Scale, url: str) -> list[Row]:
    rng = random.Random(7)
    ordinary = range(2 * fleet.few + 1, fleet.devices + 1)
    rows = []

    picked = [rng.choice(ordinary) for _ in range(scale.requests)]
    rows.append(
        await bench.both(
            "performance, 24 h window, random vehicle",
            [f"/v1/analytics/performance/{vehicle_name(v)}" for v in picked],
            [lambda v=v: bench.performance_sql(vehicle_name(v)) for v in picked],
            target_ms=5.0,
        )
    )

    # 1 day vs 30 days of history, interleaved so that the machine's drift hits both alike.
    spans = {"1 day": fleet.one_day_ids, "30 days": fleet.long_ids}
    picks = {label: [rng.choice(ids) for _ in range(scale.rounds)] for label, ids in spans.items()}
    by_span = {
        label: Row(f"performance, vehicle with {label} of history", [], [], target_ms=None)
        for label in spans
    }
    for index in range(scale.rounds):
        for label, row in by_span.items():
            name = vehicle_name(picks[label][index])
            row.http += await timed(bench.http_calls([f"/v1/analytics/performance/{name}"]))
            row.sql += await timed([lambda name=name: bench.performance_sql(name)])
    rows.extend(by_span.values())

    rows.append(
        await bench.both(
            f"fleet view, {fleet.devices:,} vehicles, 24 h",
            ["/v1/analytics/fleet"] * scale.fleet_requests,
            [bench.fleet_sql] * scale.fleet_requests,
            target_ms=150.0,
            on="max",
        )
    )
    # The same without link changes inside the window (it ends before one vehicle in ten was
    # moved): what the re-linked vehicles' cut segments cost.
    end = datetime.now(UTC) - timedelta(hours=6)
    earlier = (end - timedelta(hours=24), end)
    span = "&".join(
        f"{key}={moment.isoformat().replace('+00:00', 'Z')}"
        for key, moment in (("from", earlier[0]), ("to", earlier[1]))
    )
    rows.append(
        await bench.both(
            "fleet view, 24 h ending 6 h ago (no link change inside)",
            [f"/v1/analytics/fleet?{span}"] * scale.fleet_requests,
            [lambda: bench.fleet_sql(earlier)] * scale.fleet_requests,
            target_ms=None,
            on="max",
        )
    )
    # A week ending now: whole days, where the daily rollups replace 24 hourly rows a device.
    now = datetime.now(UTC)
    week = (now - timedelta(days=7), now)
    rows.append(
        await bench.both(
            "fleet view, 7 days",
            [f"/v1/analytics/fleet?from={week[0].isoformat().replace('+00:00', 'Z')}"]
            * scale.fleet_requests,
            [lambda: bench.fleet_sql(week)] * scale.fleet_requests,
            target_ms=None,
            on="max",
        )
    )
    for kind, name_of in (("vehicle", vehicle_name), ("meter", meter_name)):
        names = [name_of(rng.randint(1, fleet.devices)) for _ in range(scale.requests)]
        rows.append(
            await bench.both(
                f"status of one {kind}",
                [f"/v1/status/{kind}/{name}" for name in names],
                [lambda kind=kind, name=name: bench.status_sql(kind, name) for name in names],
                target_ms=2.0,
            )
        )
    return rows


async def history_plans(bench: Bench, fleet: Fleet, url: str) -> list[tuple[str, Plan]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the performance SQL, per history length (after a warm-up)."""
    plans = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for label, vehicle in (
            ("1 day", fleet.one_day_ids[0]),
            ("7 days", 2 * fleet.few + 1),
            ("30 days", fleet.long_ids[0]),
        ):
            await bench.performance_plan(conn, vehicle)
            plans.append((label, await bench.performance_plan(conn, vehicle)))
    return plans


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if number == 0:
            print("| " + " | ".join("-" * w for w in widths) + " |")


async def generate_fleet(server: Postgres, fleet: Fleet) -> None:
    async with await psycopg.AsyncConnection.connect(server.url, autocommit=True) as conn:
        await conn.execute("ALTER SYSTEM SET shared_buffers = '1GB'")
        await conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
    server.stop()
    server.start()
    print(
        f"generating {fleet.devices:,} vehicles and {fleet.devices:,} meters, {fleet.days} days"
        f" of history (devices 1-{fleet.few}: {fleet.long_days} days,"
        f" {fleet.few + 1}-{2 * fleet.few}: 1 day) ...",
        flush=True,
    )
    made = await generate(server.url, fleet)
    print(
        f"history: {made['vehicle_rows']:,.0f} vehicle + {made['meter_rows']:,.0f} meter rows;"
        f" one reading a minute over the last {fleet.dense_days} days (every window asked"
        f" for lies there), one every {fleet.sparse_every} minutes before that;"
        f" {made['database_bytes'] / 1e9:.1f} GB; generated in {made['generate_s']:.0f} s,"
        f" vacuumed in {made['vacuum_s']:.0f} s",
        flush=True,
    )


async def measure_load(
    server: Postgres, broker: Mosquitto, fleet: Fleet, scale: Scale
) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """The load scenarios against python -m http_api in its own process, with its defaults."""
    dashboards = await read_tokens(server.url, scale.load.dashboards, "dashboard")
    greedy, normal = await read_tokens(server.url, 2, "load")
    api, port = await asyncio.to_thread(start_api, server.url, broker.url, server.root)
    base_url = f"http://127.0.0.1:{port}"
    rng = random.Random(11)
    paths = [
        f"/v1/analytics/performance/{vehicle_name(rng.randint(1, fleet.devices))}"
        for _ in range(200)
    ]
    try:
        polled = await poll_fleet(base_url, dashboards, scale.load)
        contended = await greedy_next_to_normal(base_url, greedy, normal, paths, scale.load)
    finally:
        await asyncio.to_thread(api.stop)
    return polled, contended


def print_load(scale: LoadScale, polled: dict[str, Samples], fair: dict[str, Samples]) -> None:
    print(
        f"\nUnder load (python -m http_api, its default TOKEN_* limits and FLEET_CACHE_S):"
        f" {scale.dashboards:,} dashboards, each its own token, polling the default fleet view"
        f" every {scale.poll_s:g} s for {scale.duration_s:g} s"
        f" (views computed: {polled['views'].statuses[200]}); then one greedy token keeping"
        f" {scale.greedy_workers} performance requests going (ignoring 429) next to a normal"
        f" one asking every {scale.normal_every_s:g} s"
    )
    print_table(
        [
            ["figure", "p50 / p99 ms", "requests", "429", "5xx or no answer", "target", ""],
            polled["all"].cells("fleet view, every answer (incl. the minute's computation)", None),
            polled["cached"].cells("fleet view, served from the cache", 5.0),
            fair["normal"].cells("normal token next to a greedy one", 500.0),
            fair["greedy"].cells("greedy token", None),
        ]
    )


@dataclasses.dataclass(slots=True)
class Latency:
    rows: list[Row]
    speeds: tuple[float, float, float, float]  # loop before, after; database before, after
    plans: list[tuple[str, Plan]]


async def measure_latency(
    server: Postgres, broker: Mosquitto, fleet: Fleet, scale: Scale
) -> Latency:
    # The latency figures are of one client asking back to back, of the computation: no
    # per-token limits and no fleet view cache (measure_load has both, as deployed).
    settings = ApiSettings.from_env({}).replace(
        database_url=server.url,
        mqtt=MqttAddress.parse(broker.url),
        log_level="WARNING",
        token_concurrency=0,
        token_rate=0.0,
        fleet_cache_s=0.0,
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    tune_garbage_collection()  # as python -m http_api does
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        _, token = await create_token(server.url, "read", "bench")
        async with (
            aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {token}"},
            ) as http,
            open_pool(server.url, 2, "bench-sql") as pool,  # the fleet view takes two
        ):
            bench = Bench(http, pool, settings)
            speed_before = loop_ms()
            database_before = await asyncio.to_thread(database_ms, server.url)
            rows = await measure(bench, fleet, scale, server.url)
            speed_after = loop_ms()
            database_after = await asyncio.to_thread(database_ms, server.url)
            plans = await history_plans(bench, fleet, server.url)
    finally:
        await runner.cleanup()
    return Latency(rows, (speed_before, speed_after, database_before, database_after), plans)


def print_latency(latency: Latency) -> None:
    rows = latency.rows
    speed_before, speed_after, database_before, database_after = latency.speeds
    where = machine()
    print()
    print_table(
        [["figure", "HTTP p50 / p99 ms", "SQL alone p50 / p99 ms", "target", "", "machine"]]
        + [row.cells(where) for row in rows]
    )
    print(
        f"\nmachine speed (bench.harness.loop_ms, lower is faster): {speed_before:.0f} ms before"
        f" the requests, {speed_after:.0f} ms after; the database's (bench.harness.database_ms):"
        f" {database_before:.0f} ms before, {database_after:.0f} ms after"
    )
    one_day = percentile(rows[1].http, 0.5)
    thirty = percentile(rows[2].http, 0.5)
    print(f"\n30 days / 1 day of history, HTTP p50: {thirty / one_day:.2f}")
    print("EXPLAIN (ANALYZE, BUFFERS) of the performance SQL (3 statements, 24 h window):")
    for label, plan in latency.plans:
        print(
            f"  {label:>7} of history: {plan.buffers} buffers executing,"
            f" {plan.planning_buffers} planning; {plan.planning_ms:.2f} ms planning,"
            f" {plan.execution_ms:.2f} ms executing"
        )


async def run(scale: Scale, quick: bool, keep: bool, reuse: Path | None, load_only: bool) -> None:
    fleet = Fleet(devices=scale.devices, days=7)
    server = Postgres() if reuse is None else Postgres.existing(reuse)
    broker = Mosquitto()
    try:
        if reuse is not None:
            server.start()
            print(
                f"reusing the data set kept in {reuse} (its readings end when it was generated)",
                flush=True,
            )
        else:
            await generate_fleet(server, fleet)
        latency = None if load_only else await measure_latency(server, broker, fleet, scale)
        polled, fair = await measure_load(server, broker, fleet, scale)
    finally:
        broker.close()
        if keep or reuse is not None:
            server.stop()
            print(
                f"kept (stopped) in {server.root}: measure again with --reuse {server.root};"
                f" to iterate on plans: pg_ctl -D {server.datadir} start (port {server.port})"
            )
        else:
            server.close()
    if latency is not None:
        print_latency(latency)
    print_load(scale.load, polled, fair)
    if quick:
        print("(--quick: a scaled-down smoke run; the figures are not the issue's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 devices, fewer requests")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the generated cluster (stopped) instead of deleting it, to iterate on plans",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="measure on a data set kept by --keep (the folder it printed, above data/) instead"
        " of generating one; it stays kept",
    )
    parser.add_argument(
        "--load-only",
        action="store_true",
        help="only the load scenarios (dashboards polling the fleet view, a greedy token)",
    )
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    asyncio.run(run(scale, args.quick, args.keep, args.reuse, args.load_only))


if __name__ == "__main__":
    main()
