"""``python -m http_api``: serve the HTTP API; ``python -m http_api token ...``: manage tokens."""

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
from http_api.garbage_collection import tune_garbage_collection
from http_api.settings import Settings, describe_options
from http_api.tokens import add_token_commands, run_token_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m http_api",
        description="Serve the fleetgate HTTP API (status, links, analytics, ingestion); "
        "with 'token', create, list or revoke its bearer tokens.",
        epilog=describe_options(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_token_commands(parser)
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
    if getattr(args, "command", None) == "token":
        return run_token_command(args, settings)
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: Settings) -> None:
    runner = web.AppRunner(
        create_app(settings), shutdown_timeout=settings.shutdown_timeout_s, access_log=None
    )
    await runner.setup()
    tune_garbage_collection()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        logging.getLogger("http_api").info(
            "listening on http://%s:%d", settings.http_host, settings.http_port
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()  # stop listening, finish requests in flight, close the pool


if __name__ == "__main__":
    sys.exit(main())
