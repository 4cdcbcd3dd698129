"""Counters of what the gateway did, exported for Prometheus and summarised in the log."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Final

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from psycopg_pool import PoolTimeout

from gateway.alert_rules import RULES
from gateway.writer import WriteResult

logger = logging.getLogger(__name__)

# Why a write was tried again (fleetgate_database_retries' label): see retry_reason.
RETRY_REASONS: Final = ("unreachable", "pool_timeout", "conflict", "refused_statement", "schema")


def retry_reason(error: BaseException) -> str:
    """The reason a failed batch write is retried: the database unreachable (refused or lost
    connection), no pooled connection in time, a deadlock or serialization failure, or a
    statement the database refused for a reason no retry fixes by itself (the schema is
    re-applied first)."""
    if isinstance(error, PoolTimeout):
        return "pool_timeout"
    if isinstance(error, psycopg.errors.TransactionRollback):
        return "conflict"
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return "unreachable"
    return "refused_statement"


class Metrics:
    """One gateway's counters, in a registry of its own (so tests can run several gateways)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "fleetgate_messages_committed", "MQTT messages committed", registry=self.registry
        )
        self.readings = Counter(
            "fleetgate_readings_inserted", "Readings stored in history", registry=self.registry
        )
        self.duplicates = Counter(
            "fleetgate_readings_duplicate",
            "Readings already in history (stored once)",
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "fleetgate_dead_letters",
            "Messages or array elements kept as dead letters",
            registry=self.registry,
        )
        self.dead_letters_counted = Counter(
            "fleetgate_dead_letters_counted",
            "Dead letters past the cap (per device and minute, or in all): counted in "
            "dead_letter_overflow with a sample instead of kept whole",
            registry=self.registry,
        )
        self.permanent_errors = Counter(
            "fleetgate_database_permanent_errors",
            "Batches the database refused for a reason no retry fixes by itself (a missing table, "
            "a revoked right); the batch is kept and retried after re-applying the schema",
            registry=self.registry,
        )
        self.acks_skipped = Counter(
            "fleetgate_acks_skipped",
            "Committed messages whose connection had dropped: the broker redelivers them",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "fleetgate_batch_commit_seconds",
            "Time to write and commit one batch: its transaction, from taking a connection to "
            "the commit (not the time the batch took to fill, nor earlier failed attempts)",
            registry=self.registry,
        )
        self.commit_lag_seconds = Histogram(
            "fleetgate_receive_to_commit_seconds",
            "From a message's arrival at the gateway to its commit",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "fleetgate_broker_connected",
            "1 while connected and subscribed to the broker, else 0",
            registry=self.registry,
        )
        self.database_retries = Counter(
            "fleetgate_database_retries",
            "Database attempts that failed and are tried again, by reason: unreachable, "
            "pool_timeout, conflict (deadlock or serialization failure), refused_statement (a "
            "batch the database refused for a reason no retry fixes by itself), schema (the "
            "schema could not be applied at start)",
            ["reason"],
            registry=self.registry,
        )
        self.readings_waiting = Gauge(
            "fleetgate_readings_waiting",
            "Readings and dead letters taken from the broker and not yet committed: the batch "
            "filling, the one queued and the one being written",
            registry=self.registry,
        )
        self.alerts_raised = Counter(
            "fleetgate_alerts_raised", "Alerts raised, by rule", ["rule"], registry=self.registry
        )
        self.alerts_cleared = Counter(
            "fleetgate_alerts_cleared", "Alerts cleared, by rule", ["rule"], registry=self.registry
        )
        self.heartbeat_failures = Counter(
            "fleetgate_heartbeat_failures",
            "Heartbeats that could not be recorded in gateway_heartbeat (the gateway goes on)",
            registry=self.registry,
        )
        # Every series from the start, at 0: a rate over the first raise or retry needs one.
        for reason in RETRY_REASONS:
            self.database_retries.labels(reason=reason)
        for rule in RULES:
            self.alerts_raised.labels(rule=rule)
            self.alerts_cleared.labels(rule=rule)
        self.summary = Summary()
        self.lifecycle = LifecycleMetrics(self.registry)

    def committed(
        self, result: WriteResult, seconds: float, oldest_lag_s: float, acks_skipped: int
    ) -> None:
        self.messages.inc(result.messages)
        self.readings.inc(result.inserted)
        self.duplicates.inc(result.duplicates)
        self.dead_letters.inc(result.dead_letters)
        self.dead_letters_counted.inc(result.dead_letters_counted)
        self.acks_skipped.inc(acks_skipped)
        self.batch_seconds.observe(seconds)
        self.commit_lag_seconds.observe(oldest_lag_s)
        self.summary.add(result, oldest_lag_s)

    def alerts_changed(self, state: str, rules: list[str]) -> None:
        """``rules``: one entry per alert raised (``state`` 'raised') or cleared."""
        counter = self.alerts_raised if state == "raised" else self.alerts_cleared
        for rule in rules:
            counter.labels(rule=rule).inc()


class LifecycleMetrics:
    """What retention and compaction did, and what is stored (gateway/lifecycle.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.storage_bytes = Gauge(
            "fleetgate_storage_bytes",
            "Bytes stored per tier (raw, hourly, daily, dead_letters, alerts: tables, indexes "
            "and TOAST), as of the latest retention check",
            ["tier"],
            registry=registry,
        )
        self.oldest_day = Gauge(
            "fleetgate_history_oldest_day_seconds",
            "Start (UTC midnight, Unix time) of the oldest day of raw history kept",
            registry=registry,
        )
        self.newest_day = Gauge(
            "fleetgate_history_newest_day_seconds",
            "Start (UTC midnight, Unix time) of the newest day of raw history kept",
            registry=registry,
        )
        self.runs = Counter(
            "fleetgate_lifecycle_runs",
            "Retention checks, by result: done, skipped (another process held the lifecycle "
            "lock), failed (logged; the next check tries again)",
            ["result"],
            registry=registry,
        )
        self.partitions_dropped = Counter(
            "fleetgate_retention_partitions_dropped",
            "Daily history partitions dropped by retention",
            registry=registry,
        )
        self.rows_deleted = Counter(
            "fleetgate_retention_rows_deleted",
            "Rows deleted by retention, by tier (hourly, daily, dead_letters, alerts)",
            ["tier"],
            registry=registry,
        )
        self.lock_timeouts = Counter(
            "fleetgate_retention_lock_timeouts",
            "Partition drops that gave up after waiting 100 ms for the history table's lock "
            "(writers queue behind it meanwhile); tried again later",
            registry=registry,
        )
        self.partitions_compacted = Counter(
            "fleetgate_compaction_partitions",
            "Finished days' partitions whose indexes were rebuilt",
            registry=registry,
        )
        self.compaction_bytes_saved = Counter(
            "fleetgate_compaction_bytes_saved",
            "Index bytes that compaction gave back",
            registry=registry,
        )
        self.compaction_pending = Gauge(
            "fleetgate_compaction_pending",
            "Finished days' partitions past COMPACTION_GRACE_HOURS not compacted yet",
            registry=registry,
        )
        for result in ("done", "skipped", "failed"):
            self.runs.labels(result=result)
        for tier in ("hourly", "daily", "dead_letters", "alerts"):
            self.rows_deleted.labels(tier=tier)


@dataclasses.dataclass(slots=True)
class Summary:
    """What happened since the last log line."""

    since: float = dataclasses.field(default_factory=time.monotonic)
    total: WriteResult = dataclasses.field(default_factory=WriteResult)
    batches: int = 0
    max_lag_s: float = 0.0

    def add(self, result: WriteResult, lag_s: float) -> None:
        self.total += result
        self.batches += 1
        self.max_lag_s = max(self.max_lag_s, lag_s)

    def log_and_reset(self) -> None:
        elapsed = max(time.monotonic() - self.since, 1e-9)
        if self.batches:
            t = self.total
            logger.info(
                "committed %d messages in %d batches (%.0f/s): %d readings stored, "
                "%d duplicates, %d dead letters (%d more counted past the cap); "
                "max receive-to-commit %.0f ms",
                t.messages,
                self.batches,
                t.messages / elapsed,
                t.inserted,
                t.duplicates,
                t.dead_letters,
                t.dead_letters_counted,
                self.max_lag_s * 1000,
            )
        self.since = time.monotonic()
        self.total = WriteResult()
        self.batches = 0
        self.max_lag_s = 0.0
