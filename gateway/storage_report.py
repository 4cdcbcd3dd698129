"""What is stored, as an operator reads it: bytes per tier and per day, rows per day (PostgreSQL's
estimate), the oldest and newest day kept, and what retention and compaction would do next
(``python -m gateway storage``, ``python -m gateway retention --dry-run``, the gateway's
storage metrics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date
from typing import Any, Final

import psycopg

from gateway.compaction import Compacted, CompactionPlan
from gateway.lifecycle_statements import COMPACTED, HORIZONS, TABLE_BYTES
from gateway.partitions import HistoryDay, history_days
from gateway.retention import ROW_TIERS, RetentionDone, RetentionPlan

# The tiers' tables besides raw history (whose bytes are its partitions').
_TIER_TABLES: Final = {tier.name: tier.tables for tier in ROW_TIERS} | {
    "alerts": ("alert", "alert_event"),
}
TIERS: Final = ("raw", *_TIER_TABLES)  # the metrics' labels, in the report's order
_TIER_NAMES: Final = {
    "raw": "raw history",
    "hourly": "hourly rollups",
    "daily": "daily rollups",
    "dead_letters": "dead letters",
    "alerts": "alerts",
}


@dataclasses.dataclass(frozen=True, slots=True)
class StorageReport:
    tier_bytes: dict[str, int]  # by tier (TIERS)
    days: tuple[HistoryDay, ...]  # every history partition, oldest first
    compacted: frozenset[tuple[str, date]]
    kept_from: dict[str, date]  # retention horizon by kind (what was dropped)

    @property
    def oldest_day(self) -> date | None:
        """The oldest day with history kept (a partition with rows)."""
        return min((d.day for d in self.days if d.has_rows), default=None)

    @property
    def newest_day(self) -> date | None:
        return max((d.day for d in self.days if d.has_rows), default=None)


async def read_storage(conn: psycopg.AsyncConnection[Any]) -> StorageReport:
    days = tuple(await history_days(conn))
    tier_bytes = {"raw": sum(d.total_bytes for d in days)}
    for tier, tables in _TIER_TABLES.items():
        total = 0
        for table in tables:
            cur = await conn.execute(TABLE_BYTES, (table,))
            row = await cur.fetchone()
            total += int(row[0]) if row and row[0] is not None else 0
        tier_bytes[tier] = total
    cur = await conn.execute(COMPACTED)
    compacted = frozenset((kind, day) for kind, day in await cur.fetchall())
    cur = await conn.execute(HORIZONS)
    kept_from = {kind: day for kind, day in await cur.fetchall()}
    return StorageReport(tier_bytes, days, compacted, kept_from)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_storage(report: StorageReport, kept_days: dict[str, int]) -> list[str]:
    """The report's lines; ``kept_days``: each tier's retention in days (0: for ever)."""
    lines = ["tier            bytes       kept"]
    for tier in TIERS:
        days = kept_days.get(tier, 0)
        kept = f"{days} days" if days else "for ever"
        if tier == "alerts":
            kept = f"ended ones {kept}"
        lines.append(f"{_TIER_NAMES[tier]:<15} {size(report.tier_bytes[tier]):>10}  {kept}")
    lines.append(
        f"oldest day kept: {report.oldest_day or '-'}, newest: {report.newest_day or '-'}"
        + "".join(f"; {k} dropped before {d}" for k, d in sorted(report.kept_from.items()))
    )
    lines.append("")
    lines.append(
        "day         kind     bytes       table       indexes     rows (estimated)  compacted"
    )
    for d in report.days:
        rows = "not analyzed" if d.rows_estimate is None else f"{d.rows_estimate:,}"
        lines.append(
            f"{d.day}  {d.kind:<7} {size(d.total_bytes):>10}  {size(d.table_bytes):>10}"
            f"  {size(d.index_bytes):>10}  {rows:>16}  "
            + ("yes" if (d.kind, d.day) in report.compacted else "no")
        )
    lines.append(
        "rows per day are PostgreSQL's estimate (pg_class.reltuples, as of the table's last"
        " VACUUM or ANALYZE), not a count"
    )
    return lines


def format_retention_plan(plan: RetentionPlan) -> list[str]:
    if plan.history_kept_from is None:
        lines = ["raw history: kept for ever (RETENTION_RAW_DAYS=0)"]
    elif not plan.partitions:
        lines = [f"raw history: nothing before {plan.history_kept_from} to drop"]
    else:
        lines = [
            f"raw history: drop {len(plan.partitions)} partitions of days before"
            f" {plan.history_kept_from} (their rollups stay until their own tier expires):"
        ]
        lines += [f"  {d.table} ({size(d.total_bytes)})" for d in plan.partitions]
    lines += _expiry_lines(plan, "delete")
    return lines


def _expiry_lines(plan: RetentionPlan | RetentionDone, verb: str) -> list[str]:
    expiries = plan.expiries if isinstance(plan, RetentionPlan) else plan.deleted
    kept = {e.tier for e in expiries}
    lines = []
    for tier in ROW_TIERS:
        if tier.name not in kept:
            lines.append(f"{_TIER_NAMES[tier.name]}: kept for ever ({tier.setting}=0)")
    for e in expiries:
        what = "ended alerts (with their events)" if e.table == "alert" else e.table
        lines.append(
            f"{_TIER_NAMES[e.tier]}: {verb} {e.rows:,} rows of {what} from before"
            f" {e.before:%Y-%m-%d %H:%M} UTC"
        )
    return lines


def format_retention_done(done: RetentionDone) -> list[str]:
    lines = [f"raw history: dropped {d.table} ({size(d.total_bytes)})" for d in done.dropped]
    if not done.dropped:
        lines.append("raw history: no partition dropped")
    lines += [
        f"raw history: {d.table} postponed (the table's lock did not come within 100 ms)"
        for d in done.postponed
    ]
    return lines + _expiry_lines(done, "deleted")


def format_compaction_plan(plan: CompactionPlan, hour: int | None) -> list[str]:
    when = (
        "never by the gateway (COMPACTION_HOUR empty)"
        if hour is None
        else (f"by the gateway at {hour:02d}:00 UTC")
    )
    lines = [f"compaction ({when}): {len(plan.due)} finished partitions due"]
    lines += [f"  reindex {d.table} (indexes {size(d.index_bytes)})" for d in plan.due]
    lines += [
        f"  drop {name}, left invalid by an interrupted compaction" for name in plan.leftovers
    ]
    if plan.refused and (plan.due or plan.leftovers):
        lines.append(f"  not as this login: {plan.refused}")
    return lines


def format_compacted(done: Sequence[Compacted]) -> list[str]:
    if not done:
        return ["compaction: nothing due"]
    return [
        f"compaction: {c.day.table} indexes {size(c.index_bytes_before)} ->"
        f" {size(c.index_bytes_after)} ({size(c.bytes_saved)} saved) in {c.seconds:.1f} s"
        for c in done
    ]
