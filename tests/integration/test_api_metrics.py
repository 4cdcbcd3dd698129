"""The API's Prometheus metrics (GET /metrics, a read token) count each request by route
template and status, time it, and show the database pool; the access log (ACCESS_LOG=on) has
one line per request, never a token or a query string."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from http_api.app import create_app
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token
from tests.http_helpers import Api, ContractClient

pytest_plugins = ["tests.http_fixtures"]


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics", headers=api.headers(api.read_token))
    assert response.status == 200
    assert response.content_type == "text/plain"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


def requests(method: str, route: str, status: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"method": method, "route": route, "status": str(status)}
    return "fleetgate_api_requests_total", tuple(sorted(labels.items()))


async def test_requests_are_counted_by_route_template_and_status(api: Api) -> None:
    assert (await api.get("/v1/status/overview"))[0] == 200
    assert (await api.get("/v1/status/vehicle/EV-none"))[0] == 404
    assert (await api.get("/v1/status/vehicle/EV-other"))[0] == 404
    assert (await api.get("/v1/status/overview", token=None))[0] == 401
    assert (await api.get("/no/such/path"))[0] == 404
    assert (await api.client.get("/metrics")).status == 401  # a token is needed

    samples = await scrape(api)
    assert samples[requests("GET", "/v1/status/overview", 200)] == 1
    assert samples[requests("GET", "/v1/status/overview", 401)] == 1
    # One series for every vehicle: the template, not the path.
    assert samples[requests("GET", "/v1/status/vehicle/{vehicleId}", 404)] == 2
    assert samples[requests("GET", "unmatched", 404)] == 1
    assert samples[requests("GET", "/metrics", 401)] == 1
    latency = ("method", "GET"), ("route", "/v1/status/vehicle/{vehicleId}")
    assert samples["fleetgate_api_request_duration_seconds_count", latency] == 2
    assert samples["fleetgate_api_request_duration_seconds_sum", latency] > 0
    # The pool, as psycopg_pool counts it.
    assert samples["fleetgate_api_db_pool_max", ()] == api.settings.db_pool_size
    assert 0 <= samples["fleetgate_api_db_pool_available", ()] <= api.settings.db_pool_size
    assert samples["fleetgate_api_db_pool_waiting", ()] == 0
    assert (await scrape(api))[requests("GET", "/metrics", 200)] == 1


@contextlib.asynccontextmanager
async def served_as_in_production(settings: ApiSettings) -> AsyncIterator[TestClient[Any, Any]]:
    """A test server whose runner logs no access line of its own (access_log=None), as
    ``python -m http_api`` runs it; its answers checked against the OpenAPI document."""
    server = TestServer(create_app(settings))
    await server.start_server(access_log=None)  # the client's start then finds it started
    async with ContractClient(server) as client:
        yield client


@pytest.fixture
async def logged_api(api_settings: ApiSettings) -> Any:
    """The API with ACCESS_LOG=on, served as ``python -m http_api`` serves it: aiohttp's own
    access logging off (the runner's access_log=None), so each line is the API's."""
    settings = api_settings.replace(access_log=True)
    async with served_as_in_production(settings) as client:
        _, token = await create_token(settings.database_url, "read", "dashboard")
        yield Api(client, settings, token, token)


async def test_the_access_log_has_a_line_per_request_and_no_token(
    logged_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api = logged_api
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        assert (await api.get("/v1/status/vehicles", limit=5))[0] == 200
        assert (await api.get("/v1/status/overview", token="fgt_wrong-token"))[0] == 401
        assert (await api.client.get("/health/live")).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 3, lines
    assert '"GET /v1/status/vehicles" 200 ' in lines[0]
    assert '"GET /v1/status/overview" 401 ' in lines[1]
    assert '"GET /health/live" 200 ' in lines[2]
    for line in lines:
        assert " ms request id " in line
        assert "limit" not in line
        assert api.read_token not in line
        assert "fgt_" not in line


async def test_the_access_log_is_off_by_default(
    api_settings: ApiSettings, caplog: pytest.LogCaptureFixture
) -> None:
    assert ApiSettings.from_env({}).access_log is False
    assert ApiSettings.from_env({"ACCESS_LOG": "on"}).access_log is True
    async with served_as_in_production(api_settings) as client:
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            assert (await client.get("/health/live")).status == 200
    assert [r for r in caplog.records if r.name == "aiohttp.access"] == []
