"""Bearer tokens and scopes, request ids, and errors answered as JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from http_api import queries
from http_api.tokens import create_token, list_tokens, revoke_token
from tests.conftest import query
from tests.http_helpers import Api, vehicle_reading, write_readings

pytest_plugins = ["tests.http_fixtures"]


async def test_every_endpoint_but_health_needs_a_token(api: Api) -> None:
    for path in ("/v1/status/overview", "/openapi.json", "/v1/links", "/v1/analytics/fleet"):
        status, body = await api.get(path, token=None)
        assert (status, body["error"]["code"]) == (401, "unauthorized"), path
        status, body = await api.get(path, token="fgt_not-a-real-token")
        assert status == 401, path
    response = await api.client.get(
        "/v1/status/overview", headers={"Authorization": f"Basic {api.read_token}"}
    )
    assert response.status == 401
    response = await api.client.get("/health")
    assert response.status in (200, 503)  # no token needed


async def test_read_scope_cannot_write_and_write_implies_read(api: Api) -> None:
    link = {"vehicleId": "EV-1", "meterId": "M-1"}
    status, body = await api.send("POST", "/v1/links", link, token="read")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, _ = await api.send("DELETE", "/v1/links/EV-1", b"", token="read")
    assert status == 403
    status, _ = await api.send("POST", "/v1/telemetry", {}, token="read")
    assert status == 403
    status, _ = await api.get("/v1/status/overview", token="write")
    assert status == 200


async def test_a_revoked_token_is_refused(api: Api) -> None:
    token_id, token = await create_token(api.settings.database_url, "read", "temp")
    assert (await api.get("/v1/links", token=token))[0] == 200
    assert await revoke_token(api.settings.database_url, token_id)
    assert not await revoke_token(api.settings.database_url, token_id)
    assert (await api.get("/v1/links", token=token))[0] == 401
    listed = await list_tokens(api.settings.database_url)
    assert [(t[0], t[1], t[2]) for t in listed if t[0] == token_id] == [(token_id, "read", "temp")]
    assert all(token not in str(row) for row in listed)  # only hashes are stored


async def test_tokens_are_stored_hashed(api: Api) -> None:
    rows = await query(api.settings.database_url, "SELECT token_hash FROM api_token")
    assert len(rows) == 2
    assert all(len(bytes(h)) == 32 for (h,) in rows)
    assert all(api.read_token.encode() not in bytes(h) for (h,) in rows)


async def test_responses_carry_a_request_id_and_errors_are_json(api: Api) -> None:
    response = await api.client.get("/v1/nowhere", headers=api.headers(api.read_token))
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "notFound"
    assert len(response.headers["X-Request-Id"]) == 32
    response = await api.client.get(
        "/v1/links", headers=api.headers(api.read_token) | {"X-Request-Id": "dash-42"}
    )
    assert response.headers["X-Request-Id"] == "dash-42"
    response = await api.client.put("/v1/links", headers=api.headers(api.write_token))
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "methodNotAllowed"


async def test_an_unexpected_error_is_a_500_with_the_request_id_and_no_trace(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(queries, "overview", broken)
    response = await api.client.get("/v1/status/overview", headers=api.headers(api.read_token))
    assert response.status == 500
    body = await response.json()
    assert body["error"]["code"] == "internalError"
    assert body["error"]["requestId"] == response.headers["X-Request-Id"]
    assert "secret" not in await response.text()


async def test_body_over_the_limit_is_413(api: Api, database_url: str) -> None:
    await write_readings(database_url, [vehicle_reading("EV-1", datetime.now(UTC), 1)])
    big = b'{"vehicleId": "' + b"x" * (api.settings.max_body_bytes + 10) + b'"}'
    status, body = await api.send("POST", "/v1/links", big)
    assert (status, body["error"]["code"]) == (413, "bodyTooLarge")
