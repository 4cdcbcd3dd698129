"""The registry drives the broker: broker_sync writes Mosquitto's files from the database and has
it reload them, so a new, disabled or rotated device takes effect within seconds, and thousands
imported at once can all connect."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from gateway.broker_logins import hash_secret, secret_matches
from gateway.broker_sync import SyncSettings, add_login, run
from gateway.database import apply_schema
from tests.integration.test_broker_security import until_disconnected
from tests.services import Mosquitto


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    server = Mosquitto(secure=True)
    try:
        yield server
    finally:
        server.close()


@contextlib.asynccontextmanager
async def syncing(database_url: str, broker: Mosquitto) -> AsyncIterator[None]:
    await apply_schema(database_url)
    files = (broker.password_file, broker.acl_file, broker.pid_file)
    settings = SyncSettings(database_url, *files, interval_s=30)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop), name="broker-sync-under-test")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def execute(database_url: str, sql: str, *params: object) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(sql.encode(), params)


async def can_connect(broker: Mosquitto, username: str, secret: str) -> bool:
    try:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username=username, password=secret, identifier="x"
        ):
            return True
    except aiomqtt.MqttError:
        return False


async def eventually(check: object, seconds: float = 5.0) -> bool:
    """True once ``check()`` is, within ``seconds`` (polled); a registry change takes effect
    within a second or two."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_registry_changes_reach_the_broker_within_seconds(
    database_url: str, broker: Mosquitto
) -> None:
    async with syncing(database_url, broker):
        await execute(
            database_url,
            "INSERT INTO meter (name, secret_hash) VALUES ('SYNC-1', %s)",
            hash_secret("first"),
        )
        assert await eventually(lambda: can_connect(broker, "meter/SYNC-1", "first"))

        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username="meter/SYNC-1", password="first"
        ) as device:
            await execute(database_url, "UPDATE meter SET state = 'disabled' WHERE name = 'SYNC-1'")
            with pytest.raises(aiomqtt.MqttError):  # connected, then disconnected
                await until_disconnected(device)
        assert not await can_connect(broker, "meter/SYNC-1", "first")

        await execute(
            database_url,
            "UPDATE meter SET state = 'active', secret_hash = %s WHERE name = 'SYNC-1'",
            hash_secret("rotated"),
        )
        assert await eventually(lambda: can_connect(broker, "meter/SYNC-1", "rotated"))
        assert not await can_connect(broker, "meter/SYNC-1", "first")

        engineer = await add_login(database_url, "alice", "engineer")
        assert await eventually(lambda: can_connect(broker, "alice", engineer))


async def test_a_thousand_devices_imported_at_once_can_all_connect(
    database_url: str, broker: Mosquitto
) -> None:
    secret = uuid.uuid4().hex
    async with syncing(database_url, broker):
        await execute(
            database_url,
            "INSERT INTO vehicle (name, secret_hash)"
            " SELECT 'BULK-' || n, %s FROM generate_series(1, 1000) n",
            hash_secret(secret),
        )
        assert await eventually(lambda: can_connect(broker, "vehicle/BULK-1000", secret))
        results = await asyncio.gather(
            *(can_connect(broker, f"vehicle/BULK-{n}", secret) for n in range(1, 1001, 37))
        )
        assert all(results)


def test_init_makes_service_logins_the_files_and_a_private_ca(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MOSQUITTO_PASSWORD_FILE": str(tmp_path / "passwd"),
        "MOSQUITTO_ACL_FILE": str(tmp_path / "acl"),
        "MOSQUITTO_CERTS_DIR": str(tmp_path / "certs"),
        "SERVICE_LOGINS": "fleetgate-gateway:gateway:GW_SECRET fleetgate-api:api:API_SECRET",
        "GW_SECRET": "gateway-secret",
        "API_SECRET": "api-secret",
    }
    command = [sys.executable, "-m", "gateway.broker_sync"]
    done = subprocess.run([*command, "init"], env=env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    users = dict(line.split(":", 1) for line in (tmp_path / "passwd").read_text().splitlines())
    assert set(users) == {"fleetgate-gateway", "fleetgate-api"}
    assert secret_matches("gateway-secret", users["fleetgate-gateway"])
    assert "user fleetgate-api\ntopic write fleet/meter/+" in (tmp_path / "acl").read_text()
    assert {p.name for p in (tmp_path / "certs").iterdir()} == {
        "ca.crt",
        "server.crt",
        "server.key",
    }

    refused = subprocess.run(
        [*command, "login", "bad/name", "engineer"], env=env, capture_output=True, check=False
    )
    assert refused.returncode == 2
    assert refused.stderr.decode().count("\n") == 1  # one line, no traceback
