"""``python -m gateway``: run the ingestion gateway until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading

from gateway.service import Gateway, TaskDiedError
from gateway.settings import OPTIONS, Settings, SettingsError, describe_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Subscribe to fleet/# (QoS 1, persistent session), "
        "commit readings to PostgreSQL in batches, acknowledge each message after its commit.",
        epilog=describe_options(OPTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
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


async def _serve(settings: Settings) -> int:
    """Run the gateway; 1 if it stopped by itself (logged where it happened), else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
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
