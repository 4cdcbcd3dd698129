"""A gateway never stays alive but idle: a background task that dies stops the process (exit 1),
one that will not stop is ended by the watchdog (exit 70), and a database error that no retry
fixes is reported, repaired where it can be, and never acknowledged without a commit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from datetime import UTC, datetime

import aiomqtt
import psycopg
import pytest

from gateway.metrics import Summary
from gateway.service import TaskDiedError
from gateway.settings import Settings
from tests.services import PROJECT, free_port
from tests.support import StartGateway, count, equals, query, wait_until


def reading() -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"kwhConsumedAc": 0.5, "voltage": 231, "timestamp": now}).encode()


async def test_a_cancelled_background_task_stops_the_gateway_and_loses_nothing(
    start_gateway: StartGateway, publisher: aiomqtt.Client, settings: Settings
) -> None:
    running = await start_gateway()
    await publisher.publish("fleet/meter/SUP-1", reading(), qos=1)
    [rules] = [task for task in asyncio.all_tasks() if task.get_name() == "alert-rules"]
    rules.cancel()
    with pytest.raises(TaskDiedError, match="alert-rules"):
        await asyncio.wait_for(running.task, 30)
    # Committed while it drained, or never acknowledged and delivered again to the next one.
    await start_gateway()
    stored = "SELECT count(*) FROM meter_reading"
    await wait_until(lambda: equals(count(settings.database_url, stored), 1), what="stored once")
    await asyncio.sleep(0.5)
    assert await count(settings.database_url, stored) == 1


async def test_a_failing_background_task_stops_the_gateway(
    start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await start_gateway()

    def broken(_: Summary) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(Summary, "log_and_reset", broken)
    with pytest.raises(TaskDiedError, match="stats"):
        await asyncio.wait_for(running.task, 30)


# A process whose stats task fails while its alert task ignores every cancellation: without the
# watchdog it would hang forever.
_STUCK_GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from gateway import __main__ as entry, alerts, service

    async def ignores_cancellation(self, stop):
        while True:
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass

    async def fails(self):
        await asyncio.sleep(0.5)
        raise RuntimeError("injected fault")

    alerts.AlertEvaluator.run = ignores_cancellation
    service.Gateway._log_stats = fails
    sys.exit(entry.main([]))
    """
)


async def test_a_gateway_that_cannot_stop_is_ended_by_its_watchdog(settings: Settings) -> None:
    env = {
        "DATABASE_URL": settings.database_url,
        "MQTT_URL": f"mqtt://{settings.mqtt.host}:{settings.mqtt.port}",
        "MQTT_CLIENT_ID": settings.client_id,
        "METRICS_PORT": "0",
        "SHUTDOWN_TIMEOUT_S": "1",
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STUCK_GATEWAY,
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 70, output.decode()
    assert b"did not stop within 11 s" in output


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


_REFUSE_DEAD_LETTERS = """
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'dead letters are refused' USING ERRCODE = '42501'; END $$;
CREATE TRIGGER refuse BEFORE INSERT ON dead_letter FOR EACH ROW EXECUTE FUNCTION refuse();
"""


async def execute(database_url: str, sql: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(sql.encode())


async def test_a_permanent_database_error_is_reported_retried_and_never_acknowledged(
    start_gateway: StartGateway, publisher: aiomqtt.Client, settings: Settings
) -> None:
    metrics_port = free_port()
    running = await start_gateway(metrics_port=metrics_port)
    dead_letters = "SELECT count(*) FROM dead_letter"
    # A right the schema cannot give back (a trigger refusing as a revoked privilege would).
    await execute(settings.database_url, _REFUSE_DEAD_LETTERS)
    await publisher.publish("fleet/meter/SUP-2", b"{broken", qos=1)
    await wait_until(
        lambda: equals(asyncio.to_thread(_health, metrics_port), 503), 20, "health failing"
    )
    assert running.gateway.metrics.permanent_errors._value.get() >= 1
    assert await count(settings.database_url, dead_letters) == 0
    await execute(settings.database_url, "DROP TRIGGER refuse ON dead_letter")
    await wait_until(lambda: equals(count(settings.database_url, dead_letters), 1), 20, "stored")
    await wait_until(lambda: equals(asyncio.to_thread(_health, metrics_port), 200), 20, "healthy")

    # A table dropped under the gateway: re-applying the schema repairs it; nothing is lost.
    errors_before = running.gateway.metrics.permanent_errors._value.get()
    await execute(settings.database_url, "DROP TABLE dead_letter")
    await publisher.publish("fleet/meter/SUP-3", b"{broken", qos=1)
    await wait_until(lambda: _dead_letter_of(settings.database_url, "SUP-3"), 20, "repaired")
    assert running.gateway.metrics.permanent_errors._value.get() > errors_before


async def _dead_letter_of(database_url: str, device: str) -> bool:
    exists = await query(database_url, "SELECT to_regclass('dead_letter') IS NOT NULL")
    if not exists[0][0]:
        return False
    rows = "SELECT count(*) FROM dead_letter WHERE device_name = %s"
    return await count(database_url, rows, device) == 1
