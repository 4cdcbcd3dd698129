"""What a client sends cannot break the API: ids that are not whole ids, deep or oversized JSON,
forged cursors each answer 400 (413 for a reading above MAX_PAYLOAD_BYTES) with a JSON body
naming the problem, and ingestion goes on: the next good reading is accepted and stored."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.settings import Settings as GatewaySettings
from http_api.app import create_app
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token
from tests.http_helpers import Api, contract_client, meter_reading, vehicle_reading
from tests.support import RunningGateway, count, wait_until

pytest_plugins = ["tests.http_fixtures"]

StartGateway = Callable[..., Awaitable[RunningGateway]]
NOW = datetime.now(UTC).replace(microsecond=0)
DEEP_ARRAY = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000


def _cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _reading_with(extra: bytes, name: str = "EV-deep") -> bytes:
    """A sound vehicle reading with an unknown field ``note`` holding ``extra``."""
    reading = json.dumps(vehicle_reading(name, NOW - timedelta(minutes=1), 1.0)).encode()
    return reading[:-1] + b', "note": ' + extra + b"}"


async def _refused(
    api: Api, method: str, path: str, body: Any = None, token: str = "write", **query: Any
) -> dict[str, Any]:
    """The error object of a request that must be refused with a 400 and a JSON error."""
    if body is None:
        status, answer = await api.get(path, token=token, **query)
    else:
        status, answer = await api.send(method, path, body, token=token)
    assert status == 400, (path, status, answer)
    error: dict[str, Any] = answer["error"]
    assert error["code"], answer
    assert error["message"], answer
    return error


async def test_hostile_readings_are_400s_and_the_next_good_one_is_stored(
    api: Api, database_url: str, start_gateway: StartGateway
) -> None:
    await start_gateway()
    at = NOW - timedelta(minutes=1)
    newline = {**vehicle_reading("EV-NL", at, 1.0), "vehicleId": "EV-NL\n"}
    error = await _refused(api, "POST", "/v1/telemetry", newline)
    assert (error["code"], error["parameter"]) == ("invalidReading", "vehicleId")
    assert "EV-NL\\n" in error["message"]
    for bad_id in ("EV 1", "a" * 65, "", "EV-1/x", "É", 7):
        error = await _refused(api, "POST", "/v1/telemetry", {**newline, "vehicleId": bad_id})
        assert error["parameter"] == "vehicleId", bad_id
    meter_newline = {**meter_reading("M-NL", at, 1.0), "meterId": "M-NL\n"}
    assert (await _refused(api, "POST", "/v1/telemetry", meter_newline))["parameter"] == "meterId"

    for body in (DEEP_ARRAY, DEEP_OBJECT, _reading_with(b"[" * 1500 + b"]" * 1500)):
        error = await _refused(api, "POST", "/v1/telemetry", body)
        assert error["code"] == "invalidReading"
        assert "nested deeper than" in error["message"]

    big = _reading_with(b'"' + b"x" * 300_000 + b'"')
    status, answer = await api.send("POST", "/v1/telemetry", big)
    assert status == 413, answer
    assert answer["error"]["code"] == "readingTooLarge"
    assert "MAX_PAYLOAD_BYTES" in answer["error"]["message"]

    good = vehicle_reading("EV-good", at, 2.5)
    status, answer = await api.send("POST", "/v1/telemetry", good)
    assert (status, answer["topic"]) == (202, "fleet/vehicle/EV-good"), answer

    async def stored() -> bool:
        return await count(database_url, "SELECT count(*) FROM vehicle_reading") == 1

    await wait_until(stored, seconds=10, what="the good reading stored")
    _, status_body = await api.get("/v1/status/vehicle/EV-good")
    assert status_body["deliveredDc"] == 2.5


async def test_hostile_batches_are_400s_and_bad_elements_are_named(
    api: Api, database_url: str, start_gateway: StartGateway
) -> None:
    await start_gateway()
    at = NOW - timedelta(minutes=1)
    good = vehicle_reading("EV-batch", at, 1.0)
    # A batch nests one level more than a reading may; deeper is refused whole.
    deep_element = _reading_with(b"[" * 20 + b"]" * 20, "EV-batch")
    for body in (
        DEEP_ARRAY,
        b"[" + DEEP_OBJECT + b"]",
        b"[" + DEEP_ARRAY + b"]",
        b"[%s, %s]" % (json.dumps(good).encode(), deep_element),
    ):
        error = await _refused(api, "POST", "/v1/telemetry/batch", body)
        assert error["code"] == "invalidBody", error
        assert "nested deeper than" in error["message"]

    newline = {**vehicle_reading("EV-batch", at, 1.0), "vehicleId": "EV-batch\n"}
    big = _reading_with(b'"' + b"x" * 300_000 + b'"', "EV-batch")
    body = b"[%s]" % b",".join([json.dumps(good).encode(), json.dumps(newline).encode(), big])
    status, answer = await api.send("POST", "/v1/telemetry/batch", body)
    assert status == 207, answer
    assert (answer["accepted"], answer["rejected"]) == (1, 2)
    _, named, too_big = answer["results"]
    assert (named["status"], named["parameter"]) == ("rejected", "vehicleId")
    assert "MAX_PAYLOAD_BYTES" in too_big["reason"]

    async def stored() -> bool:
        return await count(database_url, "SELECT count(*) FROM vehicle_reading") == 1

    await wait_until(stored, seconds=10, what="the good reading of the batch stored")


async def test_the_reading_limit_is_the_gateways_setting(api_settings: ApiSettings) -> None:
    """MAX_PAYLOAD_BYTES is read by both services, with one default: a reading at the limit is
    accepted, one byte more is refused (the gateway would dead-letter it)."""
    for environ in ({}, {"MAX_PAYLOAD_BYTES": "1000"}):
        limit = GatewaySettings.from_env(environ).max_payload_bytes
        assert ApiSettings.from_env(environ).max_payload_bytes == limit
    client = contract_client(create_app(api_settings.replace(max_payload_bytes=1000)))
    async with client:
        _, token = await create_token(api_settings.database_url, "write")
        api = Api(client, api_settings, token, token)
        padding = 1000 - len(_reading_with(b'""'))
        at_limit = _reading_with(b'"' + b"x" * padding + b'"')
        assert len(at_limit) == 1000
        status, answer = await api.send("POST", "/v1/telemetry", at_limit)
        assert status == 202, answer
        over = _reading_with(b'"' + b"x" * (padding + 1) + b'"')
        status, answer = await api.send("POST", "/v1/telemetry", over)
        assert (status, answer["error"]["code"]) == (413, "readingTooLarge")
        assert "1001 bytes" in answer["error"]["message"]


async def test_ids_in_paths_and_queries_are_whole_ids(api: Api) -> None:
    for path in ("/v1/status/vehicle/EV-1%0A", "/v1/links/EV-1%0A", "/v1/status/meter/M%00"):
        error = await _refused(api, "GET", path)
        assert error["code"] == "invalidParameter", (path, error)
        assert error["parameter"] in ("vehicleId", "meterId"), (path, error)
    error = await _refused(api, "GET", "/v1/alerts", deviceId="EV-1\n")
    assert error["parameter"] == "deviceId"
    error = await _refused(api, "DELETE", "/v1/links/EV-1%0A", body={})
    assert error["parameter"] == "vehicleId"
    for link in (
        {"vehicleId": "EV-1\n", "meterId": "M-1"},
        {"vehicleId": "EV-1", "meterId": "M-1\n"},
    ):
        error = await _refused(api, "POST", "/v1/links", link)
        assert error["parameter"] in ("vehicleId", "meterId"), error
    for body in (DEEP_ARRAY, DEEP_OBJECT, b'{"vehicleId": ' + DEEP_ARRAY + b"}"):
        error = await _refused(api, "POST", "/v1/links", body)
        assert error["code"] == "invalidBody", error


async def test_forged_cursors_are_400s_naming_the_cursor(api: Api) -> None:
    deep_array, deep_object = b"[" * 1500 + b"]" * 1500, b'{"a":' * 800 + b"1" + b"}" * 800
    forged = [
        _cursor(b"EV-1\x00"),
        _cursor(b"EV-1\n"),
        _cursor(deep_array),
        _cursor(deep_object),
        _cursor(b'["2026-01-01T00:00:00Z", ' + deep_array + b"]"),
        _cursor(b'["2026-01-01T00:00:00Z\x00", 1]'),
        _cursor(b"[0.5, " + deep_object + b"]"),
        _cursor(b'[0.5, "EV\x00"]'),
        _cursor(b"\xff\xfe"),
        "not base64!",
    ]
    for path in ("/v1/status/vehicles", "/v1/alerts", "/v1/analytics/fleet"):
        for cursor in forged:
            error = await _refused(api, "GET", path, cursor=cursor)
            assert (error["code"], error["parameter"]) == ("invalidParameter", "cursor"), (
                path,
                cursor,
                error,
            )
    # A cursor the API wrote still works.
    status, _ = await api.get("/v1/status/vehicles", cursor=_cursor(b"EV-1"))
    assert status == 200
