"""Fair under load: per-token limits answer 429 with Retry-After while other tokens are served,
and the default fleet view of a minute is computed once however many dashboards ask."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from http_api import queries, views_analytics
from http_api.errors import TooManyRequestsError
from http_api.fleet_cache import FLEET_CACHE, FleetViewCache
from http_api.limits import TokenLimits
from http_api.settings import Settings as ApiSettings
from tests.http_helpers import Api, iso, meter_reading, serving, vehicle_reading, write_readings

pytest_plugins = ["tests.http_fixtures"]


@pytest.fixture
async def limited(api_settings: ApiSettings) -> AsyncIterator[Api]:
    settings = api_settings.replace(token_concurrency=2, token_rate=5.0, token_burst=5)
    async with serving(settings) as running:
        yield running


async def test_a_greedy_token_gets_429_with_retry_after_while_another_is_served(
    limited: Api,
) -> None:
    answers = [await limited.get("/v1/links", token="read") for _ in range(8)]
    assert [status for status, _ in answers[:5]] == [200] * 5  # the burst
    refused = [body for status, body in answers if status == 429]
    assert refused, answers
    assert refused[0]["error"]["code"] == "tooManyRequests"
    assert "TOKEN_RATE" in refused[0]["error"]["message"]
    response = await limited.client.get("/v1/links", headers=limited.headers(limited.read_token))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    # Another token has its own bucket: served at once.
    assert (await limited.get("/v1/links", token="write"))[0] == 200
    await asyncio.sleep(1.1)  # the bucket refills at TOKEN_RATE
    assert (await limited.get("/v1/links", token="read"))[0] == 200


async def test_requests_in_progress_are_limited_per_token(
    limited: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    overview = queries.overview

    async def slow(*args: Any) -> queries.Row:
        await release.wait()
        return await overview(*args)

    monkeypatch.setattr(queries, "overview", slow)
    slow_ones = [
        asyncio.ensure_future(limited.get("/v1/status/overview", token="read")) for _ in range(2)
    ]
    await asyncio.sleep(0.2)  # both in progress, waiting
    response = await limited.client.get("/v1/links", headers=limited.headers(limited.read_token))
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (429, "tooManyRequests")
    assert response.headers["Retry-After"] == "1"
    assert "TOKEN_CONCURRENCY" in body["error"]["message"]
    assert (await limited.get("/v1/links", token="write"))[0] == 200  # not queued behind them
    release.set()
    assert [status for status, _ in await asyncio.gather(*slow_ones)] == [200, 200]
    assert (await limited.get("/v1/links", token="read"))[0] == 200  # released


async def test_health_has_no_token_and_no_limit(limited: Api) -> None:
    statuses = [(await limited.client.get("/health/live")).status for _ in range(12)]
    assert statuses == [200] * 12


def test_the_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    now = [100.0]
    limits = TokenLimits(concurrency=0, rate=2.0, burst=3, clock=lambda: now[0])

    waits: list[str] = []

    def admitted() -> bool:
        try:
            limits.admit(b"t")
        except TooManyRequestsError as exc:
            waits.append(exc.headers["Retry-After"])
            return False
        limits.release(b"t")
        return True

    assert [admitted() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one more at 2 a second
    assert [admitted(), admitted()] == [True, False]
    now[0] += 60  # never more than the burst
    assert [admitted() for _ in range(4)] == [True, True, True, False]
    assert waits == ["1", "1", "1"]  # whole seconds (RFC 9110), at least one
    assert TokenLimits(concurrency=0, rate=0.0, burst=1).concurrency == 0


@pytest.fixture
async def unlimited(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async with serving(api_settings.replace(token_concurrency=0)) as running:
        yield running


async def _a_linked_fleet(api: Api, database_url: str) -> None:
    at = datetime.now(UTC) - timedelta(hours=2)
    readings = []
    for n, dc in enumerate((7.0, 8.0, 9.5)):
        readings += [vehicle_reading(f"EV-{n}", at, dc), meter_reading(f"M-{n}", at, 10.0)]
    await write_readings(database_url, readings)
    for n in range(3):
        link = {"vehicleId": f"EV-{n}", "meterId": f"M-{n}", "since": iso(at - timedelta(hours=1))}
        assert (await api.send("POST", "/v1/links", link))[0] == 201


async def test_the_default_fleet_view_is_computed_once_for_all_who_ask_within_a_minute(
    unlimited: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _a_linked_fleet(unlimited, database_url)
    computed = []
    fleet_sums = views_analytics.fleet_sums

    async def counted(*args: Any) -> Any:
        computed.append(args[1])  # the window
        await asyncio.sleep(0.3)  # long enough for every request below to arrive meanwhile
        return await fleet_sums(*args)

    monkeypatch.setattr(views_analytics, "fleet_sums", counted)
    headers = unlimited.headers(unlimited.read_token)

    async def poll() -> tuple[int, bytes, Any]:
        response = await unlimited.client.get("/v1/analytics/fleet", headers=headers)
        return response.status, await response.read(), response.headers

    answers = await asyncio.gather(*(poll() for _ in range(50)))
    assert {status for status, _, _ in answers} == {200}
    assert len(computed) == 1  # 50 dashboards, one computation
    assert len({body for _, body, _ in answers}) == 1  # the same answer to all
    cache = unlimited.client.app[FLEET_CACHE]
    assert cache.computations == 1
    body = json.loads(answers[0][1])
    assert [v["vehicleId"] for v in body["vehicles"]] == ["EV-0", "EV-1"]  # below 0.85
    computed_at = datetime.fromisoformat(body["computedAt"])
    assert abs(datetime.fromisoformat(body["window"]["to"]) - computed_at) < timedelta(seconds=1)
    response_headers = answers[0][2]
    max_age = int(response_headers["Cache-Control"].removeprefix("max-age="))
    assert 0 < max_age <= 60
    assert 0 <= int(response_headers["Age"]) <= max_age

    await asyncio.sleep(1.1)
    status, again = await unlimited.get("/v1/analytics/fleet")
    response = await unlimited.client.get("/v1/analytics/fleet", headers=headers)
    if again["computedAt"] == body["computedAt"]:  # still the same minute: served, older
        assert len(computed) == 1
        assert int(response.headers["Age"]) >= 1
    else:  # a new minute began meanwhile: computed once more
        assert len(computed) == 2
    # Any other parameters are computed for the request, not cached.
    before = len(computed)
    status, other = await unlimited.get("/v1/analytics/fleet", below="0.9")
    assert status == 200
    assert [v["vehicleId"] for v in other["vehicles"]] == ["EV-0", "EV-1"]
    assert len(computed) == before + 1
    assert (
        "Age"
        not in (await unlimited.client.get("/v1/analytics/fleet?limit=5", headers=headers)).headers
    )


async def test_each_period_is_computed_once_and_a_failure_is_not_kept() -> None:
    now = [120.0]
    cache = FleetViewCache(60.0, clock=lambda: now[0])
    computed: list[float] = []
    failing = [True]

    async def compute() -> bytes:
        computed.append(now[0])
        await asyncio.sleep(0.01)
        if failing[0]:
            failing[0] = False
            raise OSError("the database went away")
        return b"view %d" % len(computed)

    results = await asyncio.gather(*(cache.get(compute) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(result, OSError) for result in results)  # all awaited the one try
    assert len(computed) == 1
    views = await asyncio.gather(*(cache.get(compute) for _ in range(5)))
    assert {view.body for view in views} == {b"view 2"}  # retried once, shared
    now[0] += 30
    view = await cache.get(compute)
    assert (view.body, cache.headers(view)) == (
        b"view 2",
        {"Age": "30", "Cache-Control": "max-age=60"},
    )
    now[0] += 31  # a new minute
    view = await cache.get(compute)
    assert view.body == b"view 3"
    assert cache.headers(view) == {"Age": "0", "Cache-Control": "max-age=59"}
    assert cache.computations == 3
    await cache.close()
