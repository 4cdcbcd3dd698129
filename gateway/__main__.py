"""``python -m gateway``: run the ingestion gateway until SIGTERM or SIGINT;
``python -m gateway migrate``: bring the database's schema up to date (and the services' logins
of DATABASE_LOGINS), and exit;
``python -m gateway rebuild-rollups``: recompute the rollups of a range from history, and exit;
``python -m gateway retention [--dry-run]``: apply retention and compaction once now (or print
what they would do), and exit; ``python -m gateway storage``: print what is stored, and exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import psycopg

from gateway.database_logins import (
    DATABASE_LOGINS_OPTION,
    DatabaseLogin,
    DatabaseLoginError,
    ensure_logins,
    logins_of,
)
from gateway.env_options import DATABASE_URL_OPTION, describe_options, read_options
from gateway.lifecycle_cli import retention_command, storage_command
from gateway.rollup_rebuild import Rebuilt, rebuild_rollups
from gateway.schema import SchemaVersionError, apply_schema
from gateway.service import Gateway, TaskDiedError
from gateway.settings import OPTIONS, Settings, SettingsError
from gateway.shared_subscriptions import shared_subscriptions_usable

_MIGRATE_OPTIONS = (DATABASE_URL_OPTION, DATABASE_LOGINS_OPTION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Subscribe to fleet/# (QoS 1, persistent session), "
        "commit readings to PostgreSQL in batches, acknowledge each message after its commit.",
        epilog=describe_options(OPTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(
        dest="command", metavar="{run,migrate,rebuild-rollups,retention,storage}"
    )
    commands.add_parser("run", help="run the gateway (what no command does)")
    migrate = commands.add_parser(
        "migrate",
        help="apply the schema and the migrations that DATABASE_URL's database lacks, and exit:"
        " run as the schema's owner, before services that connect with their own roles",
        epilog=describe_options(_MIGRATE_OPTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument(
        "--repair", action="store_true", help="also apply schema.sql again: make what is missing"
    )
    rebuild = commands.add_parser(
        "rebuild-rollups",
        help="delete and recompute from history the hourly and daily rollups of every device"
        " for the hours and days that a range touches, in one transaction, and exit: run as the"
        " schema's owner; a running gateway's writes wait until it commits",
    )
    rebuild.add_argument(
        "--from",
        dest="start",
        type=_utc_time,
        required=True,
        metavar="DATE",
        help="start of the range: an ISO 8601 date or time (UTC unless it has an offset)",
    )
    rebuild.add_argument(
        "--to",
        dest="end",
        type=_utc_time,
        required=True,
        metavar="DATE",
        help="end of the range, not included",
    )
    retention = commands.add_parser(
        "retention",
        help="apply retention (RETENTION_*) and compaction (COMPACTION_*) once now, whatever the"
        " hour, as a running gateway would, and exit; compaction takes the tables' owner",
        epilog=describe_options(OPTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="print what they would do, and change nothing"
    )
    commands.add_parser(
        "storage",
        help="print bytes per tier and per day, rows per day, the oldest and newest day kept and"
        " what the next retention run would drop, and exit",
    )
    args = parser.parse_args(argv)
    if args.command == "retention":
        return retention_command(os.environ, dry_run=args.dry_run)
    if args.command == "storage":
        return storage_command(os.environ)
    if args.command == "migrate":
        return _migrate(os.environ, repair=args.repair)
    if args.command == "rebuild-rollups":
        if args.end <= args.start:
            parser.error("rebuild-rollups: --to must be later than --from")
        return _rebuild_rollups(os.environ, args.start, args.end)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_serve(settings))


def _migrate(environ: Mapping[str, str], *, repair: bool) -> int:
    """0 once the schema is current (its version printed) and the logins made, else 1 and the
    reason in one line."""
    try:
        options = read_options(_MIGRATE_OPTIONS, environ)
        logins = logins_of(options["database_logins"], environ)
    except SettingsError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        version = asyncio.run(_migrate_and_make_logins(options["database_url"], logins, repair))
    except (psycopg.Error, OSError, SchemaVersionError, DatabaseLoginError) as exc:
        print(f"fleetgate: migrate failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"fleetgate: the schema is at version {version}")
    for login in logins:
        print(f"fleetgate: login {login.name}, a member of {login.group}: password set")
    return 0


async def _migrate_and_make_logins(
    database_url: str, logins: list[DatabaseLogin], repair: bool
) -> int:
    version = await apply_schema(database_url, force=repair)
    if logins:
        await ensure_logins(database_url, logins)
    return version


def _utc_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _rebuild_rollups(environ: Mapping[str, str], start: datetime, end: datetime) -> int:
    """0 once rebuilt (what was rebuilt printed), else 1 and the reason in one line."""
    try:
        database_url = read_options((DATABASE_URL_OPTION,), environ)["database_url"]
    except SettingsError as exc:
        print(f"fleetgate: {exc}", file=sys.stderr)
        return 2

    async def rebuild() -> list[Rebuilt]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await rebuild_rollups(conn, start, end)

    try:
        rebuilt = asyncio.run(rebuild())
    except (psycopg.Error, OSError) as exc:
        print(f"fleetgate: rebuild-rollups failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    first = rebuilt[0]
    print(
        f"fleetgate: rollups rebuilt from history, hours {first.hours_from:%Y-%m-%d %H:%M} to"
        f" {first.hours_to:%Y-%m-%d %H:%M} UTC, days {first.days_from:%Y-%m-%d} to"
        f" {first.days_to - timedelta(days=1):%Y-%m-%d}: "
        + "; ".join(f"{r.kind} {r.hourly_rows} hourly, {r.daily_rows} daily rows" for r in rebuilt)
    )
    return 0


async def _serve(settings: Settings) -> int:
    """Run the gateway; 1 if it stopped by itself (logged where it happened), 2 if it refused
    to start (GATEWAY_SESSIONS above 1 on a broker without shared subscriptions), else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if not await shared_subscriptions_usable(settings, stop):  # GATEWAY_SESSIONS > 1 only
        return 0 if stop.is_set() else 2
    gateway = Gateway(settings, stop)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(gateway.run(), name="gateway")
            tasks.create_task(
                _exit_if_stuck(stop, settings.shutdown_timeout_s + 10), name="watchdog"
            )
    except* TaskDiedError:
        pass
    return 0 if gateway.failure is None else 1


async def _exit_if_stuck(stop: asyncio.Event, seconds: float) -> None:
    """Once stopping, give the gateway ``seconds`` to end; past that, end the process from a
    thread (the event loop may be what is stuck). Unacknowledged messages are redelivered."""
    await stop.wait()

    def exit_now() -> None:
        logging.getLogger("gateway").critical(
            "gateway did not stop within %.0f s; exiting", seconds
        )
        os._exit(70)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
