"""The whole path with authentication on: registry -> broker_sync -> Mosquitto (production
security settings) -> the gateway with its own logins, closed enrolment -> PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import aiomqtt
import psycopg
import pytest

from gateway.broker_logins import hash_secret
from gateway.broker_sync import add_login
from gateway.database import apply_schema
from gateway.settings import MqttAddress, Settings
from tests.integration.test_broker_sync import syncing
from tests.services import Mosquitto
from tests.support import StartGateway, count, equals, wait_until


@pytest.fixture
def secure_broker() -> Iterator[Mosquitto]:
    server = Mosquitto(secure=True)
    try:
        yield server
    finally:
        server.close()


def vehicle_reading(temp: float) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"soc": 50, "kwhDeliveredDc": 0.4, "batteryTemp": temp, "timestamp": now}
    ).encode()


async def history_of(database_url: str, name: str) -> int:
    sql = "SELECT count(*) FROM vehicle_reading JOIN vehicle USING (vehicle_id) WHERE name = %s"
    return await count(database_url, sql, name)


async def test_devices_report_as_themselves_only_and_engineers_get_the_alerts(
    settings: Settings, secure_broker: Mosquitto, start_gateway: StartGateway
) -> None:
    url = settings.database_url
    await apply_schema(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for name in ("SEC-A", "SEC-B"):
            await conn.execute(
                b"INSERT INTO vehicle (name, secret_hash) VALUES (%s, %s)",
                (name, hash_secret(f"secret-{name}")),
            )
    gateway_secret = await add_login(url, "gw", "gateway")
    alerts_secret = await add_login(url, "gw-alerts", "alerts")
    engineer_secret = await add_login(url, "alice", "engineer")
    broker = f"127.0.0.1:{secure_broker.port}"
    async with syncing(url, secure_broker):
        await asyncio.sleep(1.0)  # the first sync and the broker's reload
        await start_gateway(
            mqtt=MqttAddress.parse(f"mqtt://gw:{quote(gateway_secret)}@{broker}"),
            mqtt_alerts=MqttAddress.parse(f"mqtt://gw-alerts:{quote(alerts_secret)}@{broker}"),
            enrolment="closed",
        )
        async with (
            aiomqtt.Client(
                "127.0.0.1", secure_broker.port, username="alice", password=engineer_secret
            ) as engineer,
            aiomqtt.Client(
                "127.0.0.1", secure_broker.port, username="vehicle/SEC-A", password="secret-SEC-A"
            ) as device,
        ):
            await engineer.subscribe("fleet/alerts/#", qos=1)
            await device.publish("fleet/vehicle/SEC-B", vehicle_reading(70), qos=1)  # as B
            await device.publish("fleet/vehicle/SEC-A", vehicle_reading(70), qos=1)
            await wait_until(lambda: equals(history_of(url, "SEC-A"), 1), what="A's reading")
            async with asyncio.timeout(20):
                alert = await anext(aiter(engineer.messages))
            body = json.loads(bytes(alert.payload))  # type: ignore[arg-type]
            assert (body["deviceId"], body["rule"], body["state"]) == (
                "SEC-A",
                "batteryOverTemp",
                "raised",
            )
        assert await history_of(url, "SEC-B") == 0
        assert await count(url, "SELECT count(*) FROM dead_letter") == 0  # never reached it
