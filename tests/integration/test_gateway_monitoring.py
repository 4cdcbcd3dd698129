"""The gateway's own endpoint: liveness, readiness and the summary of /health, and the metrics a
dashboard watches move with what happens (its broker stopping, a database outage, an alert
raised); its heartbeat never holds up ingestion; its batch commit time is the commit's."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import MqttAddress, Settings
from tests.e2e.test_http_faults import _set_database_reachable
from tests.services import PROJECT, Mosquitto, Postgres, free_port
from tests.support import StartGateway, count, equals, query, wait_until


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def answer(port: int, path: str) -> tuple[int, Any]:
    status, body = await asyncio.to_thread(http_get, port, path)
    return status, json.loads(body)


async def metric(port: int, name: str, **labels: str) -> float | None:
    """A sample of the gateway's /metrics, by its full name (``..._total`` for a counter)."""
    _, text = await asyncio.to_thread(http_get, port, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def total(port: int, name: str) -> float:
    """A counter's samples summed over its labels."""
    _, text = await asyncio.to_thread(http_get, port, "/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def meter_reading(minute: int = 0) -> bytes:
    at = datetime.now(UTC).replace(second=0, microsecond=0)
    at = at.replace(minute=(at.minute - minute) % 60)
    stamp = at.isoformat().replace("+00:00", "Z")
    return json.dumps({"kwhConsumedAc": 0.5, "voltage": 231, "timestamp": stamp}).encode()


@pytest.fixture
async def own_broker() -> AsyncIterator[Mosquitto]:
    broker = await asyncio.to_thread(Mosquitto)
    yield broker
    await asyncio.to_thread(broker.close)


async def test_health_and_the_broker_gauge_follow_the_gateways_broker(
    start_gateway: StartGateway, own_broker: Mosquitto, settings: Settings
) -> None:
    port = free_port()
    await start_gateway(
        mqtt=MqttAddress.parse(own_broker.url), metrics_port=port, heartbeat_interval_s=0.2
    )
    assert await answer(port, "/health/live") == (200, {"status": "live"})
    assert (await answer(port, "/health/ready"))[0] == 200
    status, summary = await answer(port, "/health")
    assert (status, summary["status"], summary["reasons"], summary["backlog"]) == (
        200,
        "ok",
        [],
        0,
    )
    assert await metric(port, "fleetgate_broker_connected") == 1.0

    await asyncio.to_thread(own_broker.stop)
    await wait_until(lambda: equals(metric(port, "fleetgate_broker_connected"), 0.0))
    status, ready = await answer(port, "/health/ready")
    assert (status, ready["status"], ready["reasons"]) == (
        503,
        "notReady",
        ["not connected to the broker"],
    )
    assert (await answer(port, "/health"))[1]["status"] == "down"
    assert await answer(port, "/health/live") == (200, {"status": "live"})
    beat = "SELECT broker_connected FROM gateway_heartbeat WHERE client_id = %s"
    await wait_until(
        lambda: equals(query(settings.database_url, beat, settings.client_id), [(False,)]),
        what="the heartbeat to say the broker is gone",
    )

    await asyncio.to_thread(own_broker.start)
    await wait_until(lambda: equals(metric(port, "fleetgate_broker_connected"), 1.0), 30)
    assert (await answer(port, "/health/ready"))[0] == 200


async def test_an_alert_raised_is_counted_by_rule(
    start_gateway: StartGateway, publisher: aiomqtt.Client
) -> None:
    port = free_port()
    await start_gateway(metrics_port=port)
    raised = {"rule": "batteryOverTemp"}
    assert await metric(port, "fleetgate_alerts_raised_total", **raised) == 0.0
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    hot = {"soc": 50, "kwhDeliveredDc": 1.0, "batteryTemp": 70, "timestamp": stamp}
    await publisher.publish("fleet/vehicle/EV-metrics", json.dumps(hot), qos=1)
    await wait_until(lambda: equals(metric(port, "fleetgate_alerts_raised_total", **raised), 1.0))
    assert await metric(port, "fleetgate_alerts_cleared_total", **raised) == 0.0


async def test_a_database_outage_counts_retries_and_holds_the_backlog(
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    postgres: Postgres,
    settings: Settings,
) -> None:
    port = free_port()
    await start_gateway(metrics_port=port, heartbeat_interval_s=0.2)
    await asyncio.to_thread(_set_database_reachable, postgres, settings.database_url, False)
    try:
        await publisher.publish("fleet/meter/M-outage", meter_reading(), qos=1)
        # Refused connections, or no connection from the pool in time: either way, retried.
        await wait_until(lambda: _above(total(port, "fleetgate_database_retries_total"), 0))
        assert await metric(port, "fleetgate_readings_waiting") == 1.0
        status, summary = await answer(port, "/health")
        assert (status, summary["status"], summary["backlog"]) == (503, "down", 1)
        assert summary["reasons"][0].startswith("cannot write to the database: ")
        await wait_until(lambda: _above(metric(port, "fleetgate_heartbeat_failures_total"), 0))
        assert (await answer(port, "/health"))[1]["heartbeat"]["ok"] is False
    finally:
        await asyncio.to_thread(_set_database_reachable, postgres, settings.database_url, True)
    await wait_until(lambda: equals(metric(port, "fleetgate_readings_waiting"), 0.0), 30)
    await wait_until(lambda: equals(answer(port, "/health"), (200, _ok_summary())), 30)
    assert await count(settings.database_url, "SELECT count(*) FROM meter_reading") == 1


def _ok_summary() -> dict[str, Any]:
    return {
        "status": "ok",
        "reasons": [],
        "broker": {"ok": True},
        "database": {"ok": True, "error": None},
        "heartbeat": {"ok": True, "error": None},
        "backlog": 0,
    }


async def _above(value: Any, floor: float) -> bool:
    found = await value
    return found is not None and found > floor


async def test_a_heartbeat_that_cannot_be_written_never_holds_up_ingestion(
    start_gateway: StartGateway, publisher: aiomqtt.Client, settings: Settings
) -> None:
    port = free_port()
    await start_gateway(metrics_port=port, heartbeat_interval_s=0.2)
    async with await psycopg.AsyncConnection.connect(settings.database_url) as locker:
        # Every beat now waits on the lock, until its timeout (1 s).
        await locker.execute("LOCK TABLE gateway_heartbeat IN ACCESS EXCLUSIVE MODE")
        await publisher.publish("fleet/meter/M-beat", meter_reading(), qos=1)
        stored = "SELECT count(*) FROM meter_reading"
        await wait_until(lambda: equals(count(settings.database_url, stored), 1), 10, "stored")
        await wait_until(lambda: _above(metric(port, "fleetgate_heartbeat_failures_total"), 0))
        status, summary = await answer(port, "/health")
        assert (status, summary["status"]) == (200, "degraded")
        assert summary["reasons"] == ["heartbeat not recorded: TimeoutError: timed out"]
        await locker.rollback()
    await wait_until(lambda: equals(answer(port, "/health"), (200, _ok_summary())), 30)


async def test_the_batch_commit_time_is_the_commits_not_the_batchs_filling(
    start_gateway: StartGateway, publisher: aiomqtt.Client, settings: Settings
) -> None:
    """A lone message waits BATCH_AGE_MS (here 1.5 s) for company before its batch is written:
    that wait is receive-to-commit lag, not commit time."""
    port = free_port()
    await start_gateway(metrics_port=port, batch_age_ms=1500)
    await publisher.publish("fleet/meter/M-slow", meter_reading(), qos=1)
    commits = "fleetgate_batch_commit_seconds_count"
    await wait_until(lambda: equals(metric(port, commits), 1.0))
    assert (await metric(port, "fleetgate_batch_commit_seconds_sum") or 0) < 1.0
    lag = await metric(port, "fleetgate_receive_to_commit_seconds_sum")
    assert lag is not None
    assert lag >= 1.5


async def test_the_compose_health_check_waits_for_readiness_once_then_asks_for_liveness(
    start_gateway: StartGateway, own_broker: Mosquitto, tmp_path: Path
) -> None:
    """docker-compose.yml's check of the gateway, run as Docker runs it (its port and marker
    file moved here): it fails until the gateway has been ready, then only if it stops
    answering."""
    port = free_port()
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    code = compose["services"]["gateway"]["healthcheck"]["test"][-1]
    code = code.replace(":9464/", f":{port}/")
    code = code.replace("/tmp/fleetgate-was-ready", str(tmp_path / "was-ready"))

    async def health_check() -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stderr=asyncio.subprocess.DEVNULL
        )
        return await process.wait()

    async def ready_status() -> int:
        return (await answer(port, "/health/ready"))[0]

    gateway = await start_gateway(mqtt=MqttAddress.parse(own_broker.url), metrics_port=port)
    await asyncio.to_thread(own_broker.stop)
    await wait_until(lambda: equals(ready_status(), 503), what="not ready")
    assert await health_check() == 1  # not ready yet: dependents keep waiting
    await asyncio.to_thread(own_broker.start)
    await wait_until(lambda: equals(ready_status(), 200), 30, "ready")
    assert await health_check() == 0
    await asyncio.to_thread(own_broker.stop)
    await wait_until(lambda: equals(ready_status(), 503), what="not ready again")
    assert await health_check() == 0  # it answers, and was ready once: healthy
    await gateway.close()
    assert await health_check() == 1  # nothing answers
