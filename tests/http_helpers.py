"""Helpers of the HTTP API tests: the app on a test server, a client that carries tokens, and
readings written through the gateway's own BatchWriter (so history and rollups are the real
thing)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from gateway.batch import Batch, Received
from gateway.database import Partitions, apply_schema, open_pool
from gateway.readings import Limits, decode_message
from gateway.writer import BatchWriter
from http_api.app import create_app
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token

# Seeding may go far into the past; the writer trusts what decode_message let through.
_SEED_LIMITS = Limits(
    max_payload_bytes=1 << 20, max_future_skew=timedelta(days=1), max_age=timedelta(days=3650)
)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def meter_reading(name: str, at: datetime, kwh: float, voltage: float = 230.0) -> dict[str, Any]:
    return {"meterId": name, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": iso(at)}


def vehicle_reading(
    name: str, at: datetime, kwh: float, temp: float = 30.0, soc: float = 50.0
) -> dict[str, Any]:
    return {
        "vehicleId": name,
        "soc": soc,
        "kwhDeliveredDc": kwh,
        "batteryTemp": temp,
        "timestamp": iso(at),
    }


async def write_readings(
    database_url: str, readings: Sequence[dict[str, Any]], per_batch: int = 500
) -> None:
    """Commit readings as the gateway would, in batches of one message per reading."""
    await apply_schema(database_url)
    async with open_pool(database_url, 1, "seed") as pool:
        writer = BatchWriter(
            pool, Partitions(pool), 0.5, lambda batch, result: None, open_enrolment=True
        )
        now = datetime.now(UTC)
        for start in range(0, len(readings), per_batch):
            batch = Batch()
            for reading in readings[start : start + per_batch]:
                kind = "meter" if "meterId" in reading else "vehicle"
                topic = f"fleet/{kind}/{reading[kind + 'Id']}"
                payload = json.dumps(reading).encode()
                decoded = decode_message(topic, payload, now, _SEED_LIMITS)
                assert not decoded.rejects, decoded.rejects
                batch.add(Received(topic, payload, now, time.monotonic(), 0, 1, 0, decoded))
            await writer.write(batch)


@dataclass
class Api:
    client: TestClient[Any, Any]
    settings: ApiSettings
    read_token: str
    write_token: str
    admin_token: str = ""

    def headers(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, token: str | None = "read", **query: Any) -> Any:
        """GET with the read token; returns (status, JSON body)."""
        response = await self.client.get(path, params=query, headers=self._auth(token))
        return response.status, await response.json()

    async def send(
        self,
        method: str,
        path: str,
        body: Any,
        token: str | None = "write",
        content_type: str | None = None,
    ) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = self._auth(token)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await self.client.request(method, path, data=data, headers=headers)
        return response.status, await response.json()

    def _auth(self, token: str | None) -> dict[str, str]:
        named = {"read": self.read_token, "write": self.write_token, "admin": self.admin_token}
        return self.headers(named.get(token, token) if token else None)


@contextlib.asynccontextmanager
async def serving(settings: ApiSettings) -> AsyncIterator[Api]:
    """The app with ``settings`` on a test server, and a read, a write and an admin token."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
    async with client:
        _, read_token = await create_token(settings.database_url, "read", "dashboard")
        _, write_token = await create_token(settings.database_url, "write", "ops")
        _, admin_token = await create_token(settings.database_url, "admin", "registry")
        yield Api(client, settings, read_token, write_token, admin_token)
