"""The API's Prometheus metrics, served at ``GET /metrics`` (a read token): requests by route
template and status, their latency, and the database pool's use (psycopg_pool's stats, read at
each scrape), and the read replicas' lag, state and reads (DATABASE_READ_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

if TYPE_CHECKING:
    from http_api.read_pools import ReadPools

# A request no route matched: one label for them all, whatever the path (the label set stays
# bounded however many paths clients try).
UNMATCHED: Final = "unmatched"
# Seconds: from a cached-token read (~1 ms) to a wide analytics window (seconds).
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# psycopg_pool's stats exported, as gauges: (stat, metric name, help).
_POOL_GAUGES: Final = (
    ("pool_size", "fleetgate_api_db_pool_size", "Connections the pool holds, in use or not"),
    ("pool_max", "fleetgate_api_db_pool_max", "Connections the pool may hold (DB_POOL_SIZE)"),
    ("pool_available", "fleetgate_api_db_pool_available", "Connections idle in the pool"),
    (
        "requests_waiting",
        "fleetgate_api_db_pool_waiting",
        "Requests waiting for a connection of the pool",
    ),
)


class ApiMetrics:
    """One app's metrics, in a registry of its own (tests run several apps in one process)."""

    def __init__(
        self,
        pool: Callable[[], AsyncConnectionPool | None],
        read_pools: Callable[[], ReadPools | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleetgate_api_requests",
            "HTTP requests answered, by method, route template (unmatched: no route) and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleetgate_api_request_duration_seconds",
            "From a request's arrival at the API's middlewares to its response, by method and "
            "route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pool))
        self.registry.register(_ReplicaCollector(read_pools))

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        route = route_template(request)
        self.requests.labels(request.method, route, str(status)).inc()
        self.latency.labels(request.method, route).observe(seconds)


API_METRICS: Final = web.AppKey("api_metrics", ApiMetrics)


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def count_answer(request: web.Request, status: int, seconds: float) -> None:
    """An observer for middleware.timed: counts every answer as the client gets it."""
    request.app[API_METRICS].observe(request, status, seconds)


async def serve_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(request.app[API_METRICS].registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


class _PoolCollector(Collector):
    """The pool's stats at scrape time; nothing before the pool is open."""

    def __init__(self, pool: Callable[[], AsyncConnectionPool | None]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool()
        if pool is None:
            return
        stats = pool.get_stats()
        for stat, name, help_text in _POOL_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=stats.get(stat, 0))


class _ReplicaCollector(Collector):
    """Reads by database, and each replica's state as its latest look found it."""

    def __init__(self, read_pools: Callable[[], ReadPools | None]) -> None:
        self._read_pools = read_pools

    def collect(self) -> Iterator[Metric]:
        pools = self._read_pools()
        if pools is None:
            return
        reads = CounterMetricFamily(
            "fleetgate_api_reads",
            "Read-only views' queries sent, by database (primary, or a replica of "
            "DATABASE_READ_URL)",
            labels=["database"],
        )
        reads.add_metric(["primary"], pools.primary_reads)
        usable = GaugeMetricFamily(
            "fleetgate_api_replica_usable",
            "1 if the replica gets reads (reachable, in recovery, within MAX_REPLICA_LAG_S)",
            labels=["replica"],
        )
        lag = GaugeMetricFamily(
            "fleetgate_api_replica_lag_seconds",
            "How far the replica's replay is behind (absent while unknown)",
            labels=["replica"],
        )
        recovery = GaugeMetricFamily(
            "fleetgate_api_replica_in_recovery",
            "1 if the replica is a standby in recovery (absent while unreachable)",
            labels=["replica"],
        )
        for replica in pools.replicas:
            reads.add_metric([replica.name], replica.reads)
            usable.add_metric([replica.name], int(replica.usable))
            if replica.lag_s is not None:
                lag.add_metric([replica.name], max(replica.lag_s, 0.0))
            if replica.in_recovery is not None:
                recovery.add_metric([replica.name], int(replica.in_recovery))
        yield from (reads, usable, lag, recovery)
