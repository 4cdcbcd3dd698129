"""The API under load (bench/api.py runs it after the latency figures): dashboards, each with its
own token, polling the default fleet view, and one greedy token next to a normal one, against
``python -m http_api`` in its own process with its default limits (TOKEN_CONCURRENCY,
TOKEN_RATE, TOKEN_BURST) and fleet view cache (FLEET_CACHE_S)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import random
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec
import psycopg

from bench.api_timing import percentile
from bench.harness import ServiceProcess
from http_api.auth import hash_token, new_token
from tests.services import free_port


@dataclasses.dataclass(frozen=True, slots=True)
class LoadScale:
    dashboards: int
    poll_s: float  # each dashboard asks every poll_s, at its own phase
    duration_s: float  # of each scenario
    greedy_workers: int  # requests the greedy token keeps going at once, ignoring 429s
    normal_every_s: float  # the normal token's pace


FULL_LOAD = LoadScale(
    dashboards=1000, poll_s=5.0, duration_s=60.0, greedy_workers=64, normal_every_s=0.2
)
QUICK_LOAD = LoadScale(
    dashboards=200, poll_s=2.0, duration_s=10.0, greedy_workers=32, normal_every_s=0.2
)


@dataclasses.dataclass(slots=True)
class Samples:
    """Latencies (ms) and statuses of one client or group; status 0: no answer (an error)."""

    ms: list[float] = dataclasses.field(default_factory=list)
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)

    def add(self, ms: float, status: int) -> None:
        self.ms.append(ms)
        self.statuses[status] += 1

    def cells(self, figure: str, target_ms: float | None) -> list[str]:
        server_errors = sum(n for status, n in self.statuses.items() if status >= 500 or not status)
        p99 = percentile(self.ms, 0.99) if self.ms else float("nan")
        timing = f"{percentile(self.ms, 0.5):.2f} / {p99:.2f}" if self.ms else "-"
        verdict = ""
        if target_ms is not None:
            verdict = "met" if p99 < target_ms and not server_errors else "MISSED"
        return [
            figure,
            timing,
            f"{len(self.ms):,}",
            f"{self.statuses[429]:,}",
            str(server_errors),
            "-" if target_ms is None else f"p99 < {target_ms:g} ms, no 5xx",
            verdict,
        ]


class _Computed(msgspec.Struct):
    computedAt: str  # noqa: N815 (the answer's field)


_COMPUTED = msgspec.json.Decoder(_Computed)


def start_api(database_url: str, mqtt_url: str, logs: Path) -> tuple[ServiceProcess, int]:
    """``python -m http_api`` with its defaults but for where it connects, listening."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MQTT_URL": mqtt_url,
        "HTTP_PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    api = ServiceProcess("http_api", ["-m", "http_api"], env, logs / "http_api_load.log")
    api.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        api.check_alive()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return api, port
        time.sleep(0.2)
    api.stop()
    raise RuntimeError(f"python -m http_api did not listen on {port} within 60 s")


async def read_tokens(database_url: str, count: int, name: str) -> list[str]:
    """``count`` new read tokens (one statement; create_token makes one a connection)."""
    tokens = [new_token() for _ in range(count)]
    async with (
        await psycopg.AsyncConnection.connect(database_url) as conn,
        conn.cursor() as cur,
    ):
        await cur.executemany(
            "INSERT INTO api_token (name, scope, token_hash) VALUES (%s, 'read', %s)",
            [(name, hash_token(token)) for token in tokens],
        )
    return tokens


async def _get(http: aiohttp.ClientSession, path: str, token: str) -> tuple[float, int, bytes]:
    began = time.perf_counter()
    try:
        async with http.get(path, headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.read()
            status = response.status
    except aiohttp.ClientError:
        body, status = b"", 0
    return (time.perf_counter() - began) * 1000, status, body


async def poll_fleet(base_url: str, tokens: Sequence[str], scale: LoadScale) -> dict[str, Samples]:
    """Every dashboard polls GET /v1/analytics/fleet every poll_s. ``all``: every answer;
    ``cached``: those asked after their view's first answer arrived (none awaited its
    computation); also how many views were computed (distinct computedAt)."""
    connector = aiohttp.TCPConnector(limit=0)
    asked: list[tuple[float, float, float, int, str]] = []  # began, ended, ms, status, computedAt
    async with aiohttp.ClientSession(base_url, connector=connector) as http:
        # Each dashboard once first: its token looked up and cached (TOKEN_CACHE_S), its
        # connection open; what is measured is the steady state of polling.
        for start in range(0, len(tokens), 50):
            await asyncio.gather(
                *(_get(http, "/v1/analytics/fleet", t) for t in tokens[start : start + 50])
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scale.duration_s
        rng = random.Random(5)

        async def dashboard(token: str, phase: float) -> None:
            await asyncio.sleep(phase)
            while (began := loop.time()) < deadline:
                ms, status, body = await _get(http, "/v1/analytics/fleet", token)
                computed = _COMPUTED.decode(body).computedAt if status == 200 else ""
                asked.append((began, loop.time(), ms, status, computed))
                await asyncio.sleep(max(0.0, began + scale.poll_s - loop.time()))

        await asyncio.gather(*(dashboard(token, rng.uniform(0, scale.poll_s)) for token in tokens))
    first_answer: dict[str, float] = {}
    for _, ended, _, _, computed in asked:
        first_answer[computed] = min(ended, first_answer.get(computed, ended))
    every, cached = Samples(), Samples()
    for began, _, ms, status, computed in asked:
        every.add(ms, status)
        if computed and began > first_answer[computed]:
            cached.add(ms, status)
    views = Samples()
    views.statuses[200] = len({computed for *_, computed in asked if computed})
    return {"all": every, "cached": cached, "views": views}


async def greedy_next_to_normal(
    base_url: str, greedy: str, normal: str, paths: Sequence[str], scale: LoadScale
) -> dict[str, Samples]:
    """The greedy token keeps greedy_workers requests going, ignoring 429s; the normal one asks
    every normal_every_s. Both ask for a random vehicle's performance."""
    connector = aiohttp.TCPConnector(limit=0)
    result = {"greedy": Samples(), "normal": Samples()}
    async with aiohttp.ClientSession(base_url, connector=connector) as http:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + scale.duration_s
        rng = random.Random(9)

        async def greedy_worker() -> None:
            while loop.time() < deadline:
                ms, status, _ = await _get(http, rng.choice(paths), greedy)
                result["greedy"].add(ms, status)

        async def normal_client() -> None:
            while (began := loop.time()) < deadline:
                ms, status, _ = await _get(http, rng.choice(paths), normal)
                result["normal"].add(ms, status)
                await asyncio.sleep(max(0.0, began + scale.normal_every_s - loop.time()))

        await asyncio.gather(
            normal_client(), *(greedy_worker() for _ in range(scale.greedy_workers))
        )
    return result
