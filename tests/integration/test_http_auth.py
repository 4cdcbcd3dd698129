"""Bearer tokens and scopes, request ids, and errors answered as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from http_api import queries
from http_api.app import create_app
from http_api.auth import SCOPES, allows, hash_token, required_scope
from http_api.keys import TOKEN_CACHE
from http_api.settings import Settings as ApiSettings
from http_api.token_cache import LISTENER_NAME, TokenCache
from http_api.tokens import create_token, list_tokens, revoke_token
from tests.http_helpers import Api, contract_client, vehicle_reading, write_readings
from tests.services import Postgres
from tests.support import query, wait_until

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


def test_admin_implies_write_which_implies_read_and_the_registry_needs_admin() -> None:
    assert [allows(granted, "read") for granted in SCOPES] == [True, True, True]
    assert [allows(granted, "write") for granted in SCOPES] == [False, True, True]
    assert [allows(granted, "admin") for granted in SCOPES] == [False, False, True]
    assert not allows("root", "read")
    assert required_scope("GET", "/v1/devices") == "admin"
    assert required_scope("GET", "/v1/devices/{kind}/{id}") == "admin"
    assert required_scope("POST", "/v1/devices/import") == "admin"
    assert required_scope("POST", "/v1/links") == "write"
    assert required_scope("GET", "/v1/devicesX") == "read"
    assert required_scope("DELETE", None) == "write"  # no route: a 404 after the token check


async def listening_cache(api: Api) -> TokenCache:
    """The app's token cache, once its listener listens (it connects after the app starts)."""
    assert api.client.app is not None
    cache = api.client.app[TOKEN_CACHE]

    async def listening() -> bool:
        return cache.enabled

    await wait_until(listening, seconds=10, what="the token cache to listen")
    return cache


async def refused_within(api: Api, token: str, seconds: float = 2.0) -> float:
    """Seconds until a request with ``token`` is refused (401); fails after ``seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def refused() -> bool:
        return (await api.get("/v1/links", token=token))[0] == 401

    await wait_until(refused, seconds=seconds, what="the revoked token to be refused")
    return loop.time() - start


async def test_a_revoked_token_is_refused(api: Api) -> None:
    cache = await listening_cache(api)
    token_id, token = await create_token(api.settings.database_url, "read", "temp")
    assert (await api.get("/v1/links", token=token))[0] == 200
    assert cache.cached(hash_token(token)) == "read"
    assert await revoke_token(api.settings.database_url, token_id)
    assert not await revoke_token(api.settings.database_url, token_id)
    # The database notifies the API, which empties its cache: at once, not after TOKEN_CACHE_S.
    assert await refused_within(api, token) < api.settings.token_cache_s / 10
    listed = await list_tokens(api.settings.database_url)
    assert [(t[0], t[1], t[2]) for t in listed if t[0] == token_id] == [(token_id, "read", "temp")]
    assert all(token not in str(row) for row in listed)  # only hashes are stored


async def test_a_token_revoked_by_plain_sql_is_refused_at_once(api: Api) -> None:
    cache = await listening_cache(api)
    assert (await api.get("/v1/links", token="read"))[0] == 200
    assert cache.cached(hash_token(api.read_token)) == "read"
    await query(
        api.settings.database_url,
        "UPDATE api_token SET revoked_at = now() WHERE token_hash = %s RETURNING token_id",
        hash_token(api.read_token),
    )
    assert await refused_within(api, api.read_token) < api.settings.token_cache_s / 10
    assert (await api.get("/v1/links", token="write"))[0] == 200  # only that one


async def test_a_cached_token_is_not_looked_up_again(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await listening_cache(api)
    assert (await api.get("/v1/links", token="read"))[0] == 200

    async def database_refuses(*args: object) -> str | None:
        raise psycopg.OperationalError("token lookups are failing")

    monkeypatch.setattr(queries, "find_token", database_refuses)
    assert (await api.get("/v1/links", token="read"))[0] == 200  # from the cache
    status, body = await api.get("/v1/links", token="write")  # not cached: looked up, fails
    assert (status, body["error"]["code"]) == (503, "databaseUnavailable")


async def test_a_revoke_while_the_listener_is_down_takes_effect(
    api: Api, postgres: Postgres
) -> None:
    cache = await listening_cache(api)
    url = api.settings.database_url
    assert (await api.get("/v1/links", token="read"))[0] == 200
    assert cache.cached(hash_token(api.read_token)) == "read"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # The listener's connection ends and cannot come back until allowed again; the API's
        # pool keeps the connections it has, this test keeps its own.
        await _allow_connections(postgres, url, False)
        try:
            cur = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                (LISTENER_NAME,),
            )
            assert await cur.fetchall() == [(True,)]

            async def cache_off() -> bool:
                return not cache.enabled

            await wait_until(cache_off, seconds=5, what="the token cache to switch off")
            assert cache.cached(hash_token(api.read_token)) is None
            # Revoked while nobody listens: the notification is lost, the database is asked.
            await conn.execute(
                "UPDATE api_token SET revoked_at = now() WHERE token_hash = %s",
                (hash_token(api.read_token),),
            )
            assert (await api.get("/v1/links", token="read"))[0] == 401
            assert (await api.get("/v1/links", token="write"))[0] == 200
            assert cache.cached(hash_token(api.write_token)) is None  # nothing kept meanwhile
        finally:
            await _allow_connections(postgres, url, True)

    await listening_cache(api)  # reconnected, listening, emptied
    assert (await api.get("/v1/links", token="read"))[0] == 401
    assert (await api.get("/v1/links", token="write"))[0] == 200
    assert cache.cached(hash_token(api.write_token)) == "write"  # the cache is used again


async def _allow_connections(postgres: Postgres, database_url: str, allowed: bool) -> None:
    name = database_url.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
        await conn.execute(
            f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allowed).lower()}".encode()
        )


async def test_token_cache_s_0_checks_every_request_in_the_database(
    api_settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = api_settings.replace(token_cache_s=0.0)
    client = contract_client(create_app(settings))
    async with client:
        _, token = await create_token(settings.database_url, "read")
        api = Api(client, settings, token, token)
        assert (await api.get("/v1/links"))[0] == 200
        listeners = await query(
            settings.database_url,
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            LISTENER_NAME,
        )
        assert listeners == []
        assert len(client.app[TOKEN_CACHE]) == 0
        lookups: list[bytes] = []
        find_token = queries.find_token

        async def counted(pool: Any, token_hash: bytes) -> str | None:
            lookups.append(token_hash)
            return await find_token(pool, token_hash)

        monkeypatch.setattr(queries, "find_token", counted)
        assert (await api.get("/v1/links"))[0] == 200
        assert (await api.get("/v1/links"))[0] == 200
        assert lookups == [hash_token(token)] * 2


async def test_the_cache_keeps_valid_tokens_for_a_while_and_not_too_many() -> None:
    now = [1000.0]
    cache = TokenCache(ttl_s=60, max_entries=3, clock=lambda: now[0])

    async def look_up(token_hash: bytes, scope: str | None) -> str | None:
        async def find(_: bytes) -> str | None:
            return scope

        return await cache.look_up(token_hash, find)

    assert await look_up(b"a", "read") == "read"
    assert cache.cached(b"a") is None  # off until its listener listens
    cache.enable()
    assert await look_up(b"a", "read") == "read"
    assert cache.cached(b"a") == "read"
    assert await look_up(b"unknown", None) is None
    assert cache.cached(b"unknown") is None  # "unknown" is never kept
    for name in (b"b", b"c", b"d"):
        await look_up(name, "write")
    assert [cache.cached(n) for n in (b"a", b"b", b"d")] == [None, "write", "write"]  # oldest out
    now[0] += 59.9
    assert cache.cached(b"b") == "write"
    now[0] += 0.1
    assert cache.cached(b"b") is None  # expired
    await look_up(b"e", "read")
    cache.disable()
    assert (len(cache), cache.cached(b"e")) == (0, None)


async def test_a_lookup_that_a_revoke_overtook_is_not_cached() -> None:
    cache = TokenCache(ttl_s=60)
    cache.enable()

    def finding_then(event: Callable[[], None]) -> Callable[[bytes], Any]:
        async def find(_: bytes) -> str | None:
            event()  # heard while the database answered: what it read may predate the revoke
            return "read"

        return find

    assert await cache.look_up(b"t", finding_then(cache.clear)) == "read"
    assert cache.cached(b"t") is None
    assert await cache.look_up(b"t", finding_then(cache.disable)) == "read"
    cache.enable()
    assert cache.cached(b"t") is None
    assert await cache.look_up(b"t", finding_then(lambda: None)) == "read"
    assert cache.cached(b"t") == "read"


async def test_tokens_are_stored_hashed(api: Api) -> None:
    rows = await query(api.settings.database_url, "SELECT token_hash FROM api_token")
    assert len(rows) == 3  # read, write, admin
    assert all(len(bytes(h)) == 32 for (h,) in rows)
    for token in (api.read_token, api.write_token, api.admin_token):
        assert all(token.encode() not in bytes(h) for (h,) in rows)


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
