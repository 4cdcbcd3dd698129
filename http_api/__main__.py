"""``python -m http_api``: serve the HTTP API; ``python -m http_api token ...``: manage tokens;
``python -m http_api device ...``: manage the device registry."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from gateway.settings import SettingsError
from http_api.app import create_app
from http_api.device_commands import add_device_commands, run_device_command
from http_api.garbage_collection import tune_garbage_collection
from http_api.keys import BACKGROUND
from http_api.settings import Settings, describe_options
from http_api.startup import first_done, wait_for_database
from http_api.tokens import add_token_commands, run_token_command

logger = logging.getLogger("http_api")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m http_api",
        description="Serve the fleetgate HTTP API (status, links, analytics, ingestion); "
        "with 'token', create, list or revoke its bearer tokens; with 'device', manage the "
        "device registry.",
        epilog=describe_options(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command")
    add_token_commands(commands)
    add_device_commands(commands)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"fleetgate-api: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "token":
        return run_token_command(args, settings)
    if args.command == "device":
        return run_device_command(args, settings)
    return asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT (status 0), or until a background task fails (status 1:
    a supervisor restarts the process)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        if not await wait_for_database(settings.database_url, stop):
            return 0
        app = create_app(settings)
        runner = web.AppRunner(app, shutdown_timeout=settings.shutdown_timeout_s, access_log=None)
        await runner.setup()
        tune_garbage_collection()
        try:
            site = web.TCPSite(runner, settings.http_host, settings.http_port)
            await site.start()
            logger.info("listening on http://%s:%d", settings.http_host, settings.http_port)
            await first_done(stop, app[BACKGROUND].failed)
        finally:
            await runner.cleanup()  # stop listening, finish requests in flight, close the pool
        return 1 if app[BACKGROUND].failed.is_set() else 0
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    sys.exit(main())
