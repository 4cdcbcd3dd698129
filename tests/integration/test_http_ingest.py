"""HTTP ingestion: validated as the gateway does, published at QoS 1, stored by the gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from tests.http_helpers import Api, meter_reading, vehicle_reading
from tests.support import RunningGateway, count, query, wait_until

pytest_plugins = ["tests.http_fixtures"]

StartGateway = Callable[..., Awaitable[RunningGateway]]


def _now() -> datetime:
    """Now, at the test's own start: a module-wide time goes stale in a long suite run (a
    reading 10 minutes ahead of import time is not in the future 10 minutes later)."""
    return datetime.now(UTC).replace(microsecond=0)


async def test_a_posted_reading_lands_in_history(
    api: Api, database_url: str, start_gateway: StartGateway
) -> None:
    now = _now()
    await start_gateway()
    at = now - timedelta(minutes=1)
    status, body = await api.send("POST", "/v1/telemetry", meter_reading("M-http", at, 1.25))
    assert (status, body["topic"]) == (202, "fleet/meter/M-http")
    status, body = await api.send("POST", "/v1/telemetry", vehicle_reading("EV-http", at, 1.1))
    assert (status, body["topic"]) == (202, "fleet/vehicle/EV-http")

    async def stored() -> bool:
        return (
            await count(database_url, "SELECT count(*) FROM meter_reading")
            + await count(database_url, "SELECT count(*) FROM vehicle_reading")
            == 2
        )

    await wait_until(stored, what="both readings stored by the gateway")
    assert await query(database_url, "SELECT consumed_ac_mwh FROM meter_reading") == [(1_250_000,)]
    _, status_body = await api.get("/v1/status/vehicle/EV-http")
    assert status_body["deliveredDc"] == 1.1


async def test_a_batch_answers_per_reading(
    api: Api, database_url: str, start_gateway: StartGateway
) -> None:
    now = _now()
    await start_gateway()
    at = now - timedelta(minutes=1)
    good = [vehicle_reading("EV-b", at - timedelta(minutes=i), 1.0) for i in range(3)]
    future = vehicle_reading("EV-b", now + timedelta(hours=1), 1.0)
    bad_soc = vehicle_reading("EV-b", at, 1.0, soc=130)
    status, body = await api.send("POST", "/v1/telemetry/batch", [*good, future, bad_soc])
    assert status == 207
    assert (body["accepted"], body["rejected"]) == (3, 2)
    results = body["results"]
    assert [r["status"] for r in results] == ["accepted"] * 3 + ["rejected"] * 2
    assert "in the future" in results[3]["reason"]
    assert "$.soc" in results[4]["reason"]
    await wait_until(lambda: _at_least(database_url, 3), what="the three good readings stored")
    assert await count(database_url, "SELECT count(*) FROM vehicle_reading") == 3
    status, body = await api.send("POST", "/v1/telemetry/batch", good)
    assert status == 202
    status, body = await api.send("POST", "/v1/telemetry/batch", [future])
    assert status == 400
    assert body["rejected"] == 1


async def _at_least(database_url: str, expected: int) -> bool:
    return await count(database_url, "SELECT count(*) FROM vehicle_reading") >= expected


async def test_invalid_readings_are_refused_with_the_gateways_reason(api: Api) -> None:
    now = _now()
    at = now - timedelta(minutes=1)
    no_id = meter_reading("M-1", at, 1.0)
    del no_id["meterId"]
    cases = [
        (b"{broken", "malformed JSON"),
        (b"[]", "invalid reading"),
        (b'{"timestamp": "2026-01-01T00:00:00Z"}', "cannot tell the device"),
        (b'{"meterId": "M-1", "vehicleId": "EV-1"}', "cannot tell the device"),
        (no_id, "meterId is required"),
        ({**meter_reading("M-1", at, 1.0), "meterId": "a/b"}, "invalid meterId"),
        ({**meter_reading("M-1", at, 1.0), "voltage": 0}, "$.voltage"),
        (vehicle_reading("EV-1", now + timedelta(minutes=10), 1.0), "in the future"),
        (vehicle_reading("EV-1", now - timedelta(days=40), 1.0), "older than"),
        (
            b'{"vehicleId": "EV-1", "soc": 50, "kwhDeliveredDc": 1e999, "batteryTemp": 30,'
            b' "timestamp": "%s"}' % at.isoformat().encode(),
            "$.kwhDeliveredDc",
        ),
    ]
    for body, reason in cases:
        status, answer = await api.send("POST", "/v1/telemetry", body)
        assert status == 400, body
        assert answer["error"]["code"] == "invalidReading"
        assert reason in answer["error"]["message"], (body, answer)
    status, answer = await api.send("POST", "/v1/telemetry/batch", b'{"not": "a list"}')
    assert (status, answer["error"]["code"]) == (400, "invalidBody")
    status, answer = await api.send("POST", "/v1/telemetry/batch", [])
    assert status == 400
