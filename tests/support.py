"""Helpers for the tests: waiting on conditions, reading the database, running a gateway in
the test's event loop or as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from gateway.service import Gateway
from gateway.settings import Settings
from tests.services import PROJECT

LoginAs = Callable[[str, str], str]


class RunningGateway:
    """A gateway running in this test's event loop, stopped (and drained) at the end."""

    def __init__(self, settings: Settings) -> None:
        self.stop = asyncio.Event()
        self.gateway = Gateway(settings, self.stop)
        self.task = asyncio.create_task(self.gateway.run(), name="gateway-under-test")

    async def started(self) -> None:
        waiting = asyncio.ensure_future(self.gateway.subscribed.wait())
        done, _ = await asyncio.wait(
            (waiting, self.task), timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if self.task in done:
            self.task.result()
        assert waiting in done, "gateway did not subscribe within 30 s"

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)


StartGateway = Callable[..., Awaitable[RunningGateway]]


async def query(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(sql.encode(), params)
        return await cur.fetchall()


async def wait_until(
    check: Callable[[], Awaitable[bool]], seconds: float = 20.0, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            if await check():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


async def equals(value: Awaitable[object], expected: object) -> bool:
    """``await value == expected``: a check for ``wait_until`` made of any awaitable."""
    return await value == expected


async def count(database_url: str, sql: str, *params: Any) -> int:
    rows = await query(database_url, sql, *params)
    return int(rows[0][0])


class GatewayProcess:
    """``python -m gateway`` in a child process, as an operator runs it; what it logs goes to a
    file (a pipe nobody reads could fill and block it)."""

    def __init__(self, settings: Settings, **env: str) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "MQTT_URL": f"mqtt://{settings.mqtt.host}:{settings.mqtt.port}",
            "MQTT_CLIENT_ID": settings.client_id,
            "METRICS_PORT": "0",
            "RETRY_MAX_DELAY_S": "0.5",
            "STATS_INTERVAL_S": "1",
            "ENROLMENT": "open",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for every start

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            cwd=PROJECT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_subscribed(self, database_url: str) -> None:
        # The gateway applies the schema before it subscribes; then give it a moment.
        await wait_until(lambda: _table_exists(database_url), what="schema applied")
        await asyncio.sleep(1.0)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, seconds: float) -> tuple[int, str]:
        assert self.process is not None
        process = self.process
        returncode = await asyncio.to_thread(process.wait, seconds)
        return returncode, self.output()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        """What the process has logged so far; shown by pytest when a test fails."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


async def _table_exists(database_url: str) -> bool:
    return await count(database_url, "SELECT count(*) FROM pg_class WHERE relname = 'meter'") == 1
