"""No hung background task: if the publisher or the token-change listener ends while the API
serves (an error it does not handle, a cancel that is not the shutdown), the process stops with
a non-zero status, for its supervisor to restart, instead of serving on without it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from http_api.__main__ import _serve
from http_api.settings import Settings as ApiSettings
from http_api.token_cache import TOKENS_CHANNEL
from tests.services import Mosquitto, free_port
from tests.support import wait_until

pytest_plugins = ["tests.http_fixtures"]

# The API with one fault injected: the token cache fails on the first change it hears of.
_LISTENER_FAILS_ON_A_CHANGE = """
import sys
from http_api.__main__ import main
from http_api.token_cache import TokenCache

real_clear = TokenCache.clear

def clear(self):
    if self.enabled:  # a change heard while listening (enable and disable clear it switched off)
        raise RuntimeError("injected fault")
    real_clear(self)

TokenCache.clear = clear
sys.exit(main([]))
"""


async def _healthy(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health") as response,
        ):
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_a_listener_that_fails_stops_the_process_with_status_1(
    database_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    env = os.environ | {
        "DATABASE_URL": database_url,
        "MQTT_URL": mosquitto.url,
        "HTTP_PORT": str(port),
    }
    with log.open("wb") as out:
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LISTENER_FAILS_ON_A_CHANGE,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        await wait_until(lambda: _healthy(port), seconds=15, what="the API to serve")

        async def listening() -> bool:
            return "token cache on" in log.read_text()

        await wait_until(listening, seconds=5, what="the token-change listener")
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f"NOTIFY {TOKENS_CHANNEL}".encode())
        async with asyncio.timeout(10):
            status = await server.wait()
        assert status == 1, log.read_text()
        text = log.read_text()
        assert "background task 'token-change-listener' failed" in text
        assert "RuntimeError: injected fault" in text
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGKILL)
            await server.wait()


@pytest.fixture
def restored_garbage_collector() -> Iterator[None]:
    """_serve tunes the collector for the API process; this test process gets its own back."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_garbage_collector")
@pytest.mark.parametrize("victim", ["mqtt-publisher", "token-change-listener"])
async def test_a_background_task_cancelled_from_outside_ends_serving_with_status_1(
    api_settings: ApiSettings, victim: str
) -> None:
    port = free_port()
    serving = asyncio.create_task(_serve(api_settings.replace(http_port=port)))
    try:
        await wait_until(lambda: _healthy(port), seconds=15, what="the API to serve")
        [task] = [task for task in asyncio.all_tasks() if task.get_name() == victim]
        task.cancel()
        async with asyncio.timeout(10):
            assert await serving == 1
        assert not await _healthy(port), "the API stopped listening"
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


@pytest.mark.usefixtures("restored_garbage_collector")
async def test_a_stop_signal_ends_serving_with_status_0(api_settings: ApiSettings) -> None:
    """The other side: the shutdown stops the same tasks, and that is no failure."""
    port = free_port()
    serving = asyncio.create_task(_serve(api_settings.replace(http_port=port)))
    await wait_until(lambda: _healthy(port), seconds=15, what="the API to serve")
    os.kill(os.getpid(), signal.SIGTERM)  # _serve handles it on this loop while it runs
    async with asyncio.timeout(10):
        assert await serving == 0
