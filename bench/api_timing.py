"""Timing helpers of the API benchmark: latency percentiles, buffers from EXPLAIN, the machine."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 500 samples is the 495th smallest)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


async def timed(calls: Sequence[Callable[[], Awaitable[object]]]) -> list[float]:
    """Milliseconds of each call, one after the other (latency, not throughput)."""
    samples = []
    for call in calls:
        began = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


async def explain(conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]) -> Plan:
    cur = await conn.execute(
        b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql.encode(), params, prepare=False
    )
    row = await cur.fetchone()
    assert row is not None
    document = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return Plan(document[0])


class Plan:
    """The parts of one EXPLAIN (ANALYZE, BUFFERS) that the report prints."""

    def __init__(self, document: dict[str, Any]) -> None:
        top = document["Plan"]
        planning = document.get("Planning", {})
        self.buffers = int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])
        self.planning_buffers = int(planning.get("Shared Hit Blocks", 0)) + int(
            planning.get("Shared Read Blocks", 0)
        )
        self.planning_ms = float(document["Planning Time"])
        self.execution_ms = float(document["Execution Time"])

    def __add__(self, other: Plan) -> Plan:
        total = Plan.__new__(Plan)
        total.buffers = self.buffers + other.buffers
        total.planning_buffers = self.planning_buffers + other.planning_buffers
        total.planning_ms = self.planning_ms + other.planning_ms
        total.execution_ms = self.execution_ms + other.execution_ms
        return total
