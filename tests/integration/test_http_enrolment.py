"""HTTP ingestion under closed enrolment (the default): a reading of a device that is not
registered and active is refused before it is published, as the gateway would dead-letter it;
open enrolment publishes it, as before."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from gateway import registry
from http_api.settings import Settings as ApiSettings
from tests.http_helpers import Api, meter_reading, serving, vehicle_reading
from tests.services import Mosquitto
from tests.support import RunningGateway, count, equals, wait_until

pytest_plugins = ["tests.http_fixtures"]

StartGateway = Callable[..., Awaitable[RunningGateway]]
NOW = datetime.now(UTC).replace(microsecond=0)
AT = NOW - timedelta(minutes=1)


@pytest.fixture
async def closed_api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async with serving(api_settings.replace(enrolment="closed")) as running:
        yield running


@pytest.fixture
def prefix() -> str:
    """Device ids of this test only: the session's broker is shared."""
    return f"ENR{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def published(mosquitto: Mosquitto, prefix: str) -> AsyncIterator[list[str]]:
    """The topics the broker delivers for this test's devices, as they arrive."""
    topics: list[str] = []
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=f"watch-{uuid.uuid4().hex[:8]}"
    ) as client:
        await client.subscribe("fleet/#", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                if f"/{prefix}-" in message.topic.value:
                    topics.append(message.topic.value)

        task = asyncio.create_task(collect(), name="collect-published")
        yield topics
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def refusal_queries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[str]]]:
    """The meters and vehicles of each registry.refusals call (a spy: the real query answers)."""
    asked: list[tuple[list[str], list[str]]] = []
    real_refusals = registry.refusals

    async def counted(conn: Any, meters: Any, vehicles: Any) -> Any:
        asked.append((list(meters), list(vehicles)))
        return await real_refusals(conn, meters, vehicles)

    monkeypatch.setattr(registry, "refusals", counted)
    return asked


async def register(api: Api, kind: str, device_id: str, *, disabled: bool = False) -> None:
    status, body = await api.send("POST", "/v1/devices", {"kind": kind, "id": device_id}, "admin")
    assert status == 201, body
    if disabled:
        path = f"/v1/devices/{kind}/{device_id}/disable"
        status, body = await api.send("POST", path, b"", "admin")
        assert status == 200, body


async def test_closed_enrolment_refuses_unknown_and_disabled_devices_before_publishing(
    closed_api: Api, published: list[str], prefix: str
) -> None:
    known, stranger, disabled = f"{prefix}-M", f"{prefix}-X", f"{prefix}-EV"
    await register(closed_api, "meter", known)
    await register(closed_api, "vehicle", disabled, disabled=True)

    status, body = await closed_api.send("POST", "/v1/telemetry", meter_reading(stranger, AT, 1.0))
    assert status == 422, body
    assert body["error"] == {
        "code": "unknownDevice",
        "message": f"unknown device: meter {stranger!r} is not registered",
        "parameter": "meterId",
    }
    reading = vehicle_reading(disabled, AT, 1.0)
    status, body = await closed_api.send("POST", "/v1/telemetry", reading)
    assert (status, body["error"]["code"], body["error"]["parameter"]) == (
        422,
        "unknownDevice",
        "vehicleId",
    )
    assert body["error"]["message"] == f"unknown device: vehicle {disabled!r} is disabled"
    # A reading that is not sound is told so first, whatever its device.
    status, body = await closed_api.send(
        "POST", "/v1/telemetry", meter_reading(stranger, AT, 1.0, voltage=0)
    )
    assert (status, body["error"]["code"]) == (400, "invalidReading")

    status, body = await closed_api.send("POST", "/v1/telemetry", meter_reading(known, AT, 1.0))
    assert (status, body) == (202, {"status": "accepted", "topic": f"fleet/meter/{known}"})
    # The broker delivers one publisher's messages in order: the refused ones, had they been
    # published, would have arrived before this one.
    await wait_until(lambda: _has_arrived(published, 1), what="the accepted reading published")
    assert published == [f"fleet/meter/{known}"]


async def test_a_batch_publishes_the_registered_devices_and_names_the_refused_ones(
    closed_api: Api,
    published: list[str],
    prefix: str,
    start_gateway: StartGateway,
    refusal_queries: list[tuple[list[str], list[str]]],
) -> None:
    database_url = closed_api.settings.database_url
    await start_gateway(enrolment="closed")
    meter, vehicle, stranger, disabled = (f"{prefix}-{n}" for n in ("M", "EV", "X", "OFF"))
    await register(closed_api, "meter", meter)
    await register(closed_api, "vehicle", vehicle)
    await register(closed_api, "meter", disabled, disabled=True)
    batch = [
        meter_reading(meter, AT, 1.0),
        meter_reading(stranger, AT, 1.0),
        vehicle_reading(vehicle, AT, 2.0),
        meter_reading(disabled, AT, 1.0),
        vehicle_reading(vehicle, AT, 2.0, soc=130),
        meter_reading(stranger, AT - timedelta(minutes=1), 1.0),
    ]
    status, body = await closed_api.send("POST", "/v1/telemetry/batch", batch)
    assert status == 207, body
    assert (body["accepted"], body["rejected"]) == (2, 4)
    results = body["results"]
    assert [(r["status"], r.get("code")) for r in results] == [
        ("accepted", None),
        ("rejected", "unknownDevice"),
        ("accepted", None),
        ("rejected", "unknownDevice"),
        ("rejected", "invalidReading"),
        ("rejected", "unknownDevice"),
    ]
    assert results[1] == {
        "index": 1,
        "status": "rejected",
        "code": "unknownDevice",
        "reason": f"unknown device: meter {stranger!r} is not registered",
        "parameter": "meterId",
    }
    assert results[3]["reason"] == f"unknown device: meter {disabled!r} is disabled"
    assert "$.soc" in results[4]["reason"]
    assert refusal_queries == [(sorted([meter, stranger, disabled]), [vehicle])], "one query"

    await wait_until(lambda: _has_arrived(published, 2), what="the two accepted readings")
    assert sorted(published) == [f"fleet/meter/{meter}", f"fleet/vehicle/{vehicle}"]
    stored = "SELECT (SELECT count(*) FROM meter_reading) + (SELECT count(*) FROM vehicle_reading)"
    await wait_until(lambda: equals(count(database_url, stored), 2), what="both stored")
    # Nothing refused reached the gateway: it would have dead-lettered it.
    assert await count(database_url, "SELECT count(*) FROM dead_letter") == 0

    status, body = await closed_api.send("POST", "/v1/telemetry/batch", [batch[1], batch[3]])
    assert (status, body["accepted"], body["rejected"]) == (400, 0, 2)


async def test_open_enrolment_publishes_readings_of_any_device_as_before(
    api: Api, published: list[str], prefix: str
) -> None:
    assert api.settings.enrolment == "open"
    disabled = f"{prefix}-OFF"
    await register(api, "vehicle", disabled, disabled=True)
    status, body = await api.send("POST", "/v1/telemetry", meter_reading(f"{prefix}-X", AT, 1.0))
    assert status == 202, body
    batch = [vehicle_reading(disabled, AT, 1.0), meter_reading(f"{prefix}-Y", AT, 1.0)]
    status, body = await api.send("POST", "/v1/telemetry/batch", batch)
    assert (status, body["accepted"]) == (202, 2)
    await wait_until(lambda: _has_arrived(published, 3), what="all three published")


def test_the_api_refuses_unknown_devices_unless_told_otherwise() -> None:
    assert ApiSettings.from_env({}).enrolment == "closed"
    assert ApiSettings.from_env({"ENROLMENT": " Open "}).enrolment == "open"


async def _has_arrived(topics: list[str], expected: int) -> bool:
    return len(topics) >= expected
