"""``python -m gateway retention [--dry-run]`` and ``python -m gateway storage``: the data
lifecycle for an operator, with the gateway's own settings (RETENTION_*, COMPACTION_*)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

import psycopg

from gateway.compaction import plan_compaction
from gateway.lifecycle import LifecycleBusyError, run_lifecycle
from gateway.retention import ROW_TIERS, RetentionPolicy, plan_retention
from gateway.settings import Settings, SettingsError
from gateway.storage_report import (
    format_compacted,
    format_compaction_plan,
    format_retention_done,
    format_retention_plan,
    format_storage,
    read_storage,
)


def retention_command(environ: Mapping[str, str], *, dry_run: bool) -> int:
    """Print what retention and compaction would do (``dry_run``), or run both once now, as
    the gateway would at its compaction hour; 0, or 1 and the reason in one line."""
    settings = _settings(environ)
    if settings is None:
        return 2
    try:
        lines = asyncio.run(_retention(settings, dry_run=dry_run))
    except LifecycleBusyError as exc:
        print(f"fleetgate: retention not run: {exc}; try again later", file=sys.stderr)
        return 1
    except (psycopg.Error, OSError) as exc:
        print(f"fleetgate: retention failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def storage_command(environ: Mapping[str, str]) -> int:
    """Print bytes per tier and per day, rows per day, the days kept and the next run's plan."""
    settings = _settings(environ)
    if settings is None:
        return 2
    try:
        lines = asyncio.run(_storage(settings))
    except (psycopg.Error, OSError) as exc:
        print(f"fleetgate: storage failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _settings(environ: Mapping[str, str]) -> Settings | None:
    try:
        return Settings.from_env(environ)
    except SettingsError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return None


async def _retention(settings: Settings, *, dry_run: bool) -> list[str]:
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        if not dry_run:
            run = await run_lifecycle(conn, settings, now, compacting=True)
            lines = format_retention_done(run.retention) + format_compacted(run.compacted)
            if run.compaction.refused and run.compaction.due:
                lines.append(f"compaction skipped: {run.compaction.refused}")
            return lines
        plan = await plan_retention(conn, RetentionPolicy.of(settings), now)
        compaction = await plan_compaction(
            conn, now, settings.compaction_grace_hours, plan.history_kept_from
        )
    return [
        f"dry run at {now:%Y-%m-%d %H:%M} UTC: nothing is changed",
        *format_retention_plan(plan),
        *format_compaction_plan(compaction, settings.compaction_hour),
    ]


async def _storage(settings: Settings) -> list[str]:
    now = datetime.now(UTC)
    policy = RetentionPolicy.of(settings)
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        report = await read_storage(conn)
        plan = await plan_retention(conn, policy, now)
    kept_days = {"raw": policy.raw_days} | {t.name: policy.days_of(t) for t in ROW_TIERS}
    return [
        *format_storage(report, kept_days),
        "",
        f"the next retention run (as of {now:%Y-%m-%d %H:%M} UTC) would:",
        *(f"  {line}" for line in format_retention_plan(plan)),
    ]
