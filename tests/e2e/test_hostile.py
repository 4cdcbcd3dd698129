"""Hostile input through a real broker to a real gateway process: it stays up, within its memory
budget, keeps every hostile message as a dead letter (or counts it past the cap), stores the good
reading after them, and a poison message cannot crash it again after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from gateway.settings import MqttAddress, Settings
from tests.services import Mosquitto, free_port
from tests.support import GatewayProcess, count, equals, query, wait_until

pytestmark = pytest.mark.slow

RSS_BUDGET_MB = 300
JUNK_ARRAYS = 2000  # 30 KB each, 10,000 invalid elements each: 60 MB through the broker


def good_reading(meter: str) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"kwhConsumedAc": 0.5, "voltage": 231, "timestamp": now}).encode()


def poison_corpus() -> list[tuple[str, bytes]]:
    """One of each kind of hostile message, each of which must become exactly one dead letter."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z").encode()
    deep_unknown = b'{"kwhConsumedAc": 1, "voltage": 230, "timestamp": "%s", "x": ' % now
    nan = b'{"kwhConsumedAc": NaN, "voltage": 230, "timestamp": "%s"}' % now
    huge = b'{"kwhConsumedAc": 1e400, "voltage": 230, "timestamp": "%s"}' % now
    return [
        ("fleet/meter/DEEP-1", b"[" * 5000 + b"]" * 5000),
        ("fleet/meter/DEEP-2", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("fleet/meter/DEEP-3", deep_unknown + b"[" * 1500 + b"]" * 1500 + b"}"),
        ("fleet/meter/OPEN", b"[" * 100_000),
        ("fleet/meter/UTF8", b'{"kwhConsumedAc": 1, "voltage": "\xff\xfe", "timestamp": "x"}'),
        ("fleet/meter/NAN", nan),
        ("fleet/meter/INF", huge),
        ("fleet/vehicle/BIG", b'{"soc": 1, "pad": "' + b"x" * ((1 << 20) - 200) + b'"}'),
        ("fleet/meter/a/b", good_reading("a")),
        ("fleet/unknown/X", good_reading("X")),
        ("fleet/meter/" + "x" * 65, good_reading("x")),
        ("fleet/meter/EV NL", good_reading("EV NL")),
        ("fleet/meter/\u00fcber", good_reading("u")),
        ("fleet/meter/NUL", b"\x00" * 64),
    ]


async def publish(port: int, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"hostile-{uuid.uuid4().hex[:8]}"
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=retain)


def peak_rss_mb(process: GatewayProcess) -> float:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    return int(kilobytes) / 1024


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def healthy(port: int) -> bool:
    with contextlib.suppress(OSError):
        status, _ = await asyncio.to_thread(get, port, "/health")
        return status == 200
    return False


def assert_running(gateway: GatewayProcess) -> None:
    assert gateway.process is not None
    assert gateway.process.poll() is None, gateway.output()


async def dead_letters_in_all(database_url: str) -> int:
    kept = await count(database_url, "SELECT count(*) FROM dead_letter")
    counted = await count(
        database_url, "SELECT coalesce(sum(dead_letters), 0) FROM dead_letter_overflow"
    )
    return kept + counted


async def stored(database_url: str, meter: str) -> bool:
    rows = await count(
        database_url,
        "SELECT count(*) FROM meter_reading r JOIN meter m USING (meter_id) WHERE m.name = %s",
        meter,
    )
    return rows == 1


@pytest.fixture
def private_broker() -> Iterator[Mosquitto]:
    """A broker of this test's own: its retained poison must not reach other tests."""
    broker = Mosquitto()
    try:
        yield broker
    finally:
        broker.close()


async def test_hostile_messages_are_dead_letters_and_the_gateway_goes_on(
    settings: Settings, private_broker: Mosquitto, gateway_process: list[GatewayProcess]
) -> None:
    mosquitto = private_broker
    settings = settings.replace(mqtt=MqttAddress.parse(mosquitto.url))
    metrics_port = free_port()
    gateway = GatewayProcess(settings, METRICS_PORT=str(metrics_port))
    gateway_process.append(gateway)
    # A poison message waits for the gateway, retained, before it ever started.
    await publish(mosquitto.port, [("fleet/vehicle/RETAINED", b"[" * 5000 + b"]" * 5000)], True)
    gateway.start()
    await gateway.wait_subscribed(settings.database_url)
    await wait_until(lambda: healthy(metrics_port), what="gateway healthy")

    corpus = poison_corpus()
    junk = b"[" + b",".join([b"{}"] * 10_000) + b"]"
    await publish(mosquitto.port, [*corpus, *[("fleet/meter/JUNK", junk)] * JUNK_ARRAYS])
    await publish(mosquitto.port, [("fleet/meter/GOOD-1", good_reading("GOOD-1"))])

    await wait_until(lambda: stored(settings.database_url, "GOOD-1"), 60, "good reading stored")
    expected = 1 + len(corpus) + JUNK_ARRAYS
    await wait_until(
        lambda: equals(dead_letters_in_all(settings.database_url), expected),
        30,
        f"{expected} dead letters kept or counted",
    )
    assert_running(gateway)
    assert peak_rss_mb(gateway) < RSS_BUDGET_MB
    # One device's junk is kept whole up to its cap (100 a minute), the rest counted.
    junk_kept = await count(
        settings.database_url, "SELECT count(*) FROM dead_letter WHERE device_name = 'JUNK'"
    )
    assert 100 <= junk_kept <= 200  # at most two minutes' worth
    reasons = {
        row_name: reason
        for row_name, reason in await _reasons(settings.database_url)
        if row_name in ("DEEP-1", "DEEP-2", "DEEP-3", "BIG", "NAN", "UTF8", "RETAINED")
    }
    assert "nested deeper than 8 levels" in reasons["DEEP-1"]
    assert "nested deeper than 8 levels" in reasons["DEEP-3"]
    assert "exceeds the 262144-byte limit" in reasons["BIG"]
    assert "NaN" in reasons["NAN"] or "malformed" in reasons["NAN"]
    assert reasons["UTF8"].startswith("invalid reading")  # msgspec reads the type first
    assert await healthy(metrics_port)
    _, metrics = await asyncio.to_thread(get, metrics_port, "/metrics")
    counted = re.search(r"^fleetgate_dead_letters_counted_total (\S+)$", metrics, re.M)
    assert counted is not None
    assert float(counted.group(1)) == JUNK_ARRAYS - junk_kept

    # Restart with poison queued in the gateway's session while it is away: it stays up.
    gateway.signal(signal.SIGTERM)
    returncode, output = await gateway.wait_exit(30)
    assert returncode == 0, output
    await publish(mosquitto.port, [*corpus[:3], ("fleet/meter/GOOD-2", good_reading("GOOD-2"))])
    for _ in range(2):
        gateway.start()
        await gateway.wait_subscribed(settings.database_url)
        await wait_until(lambda: stored(settings.database_url, "GOOD-2"), 30, "GOOD-2 stored")
        await asyncio.sleep(1.0)
        assert_running(gateway)
        gateway.signal(signal.SIGTERM)
        returncode, output = await gateway.wait_exit(30)
        assert returncode == 0, output


async def _reasons(database_url: str) -> list[tuple[str, str]]:
    rows = await query(database_url, "SELECT device_name, reason FROM dead_letter")
    return [(str(name), str(reason)) for name, reason in rows]
