"""Fixtures of the HTTP API tests (a pytest plugin: ``pytest_plugins = ["tests.http_fixtures"]``):
the app running on a test server, with a read, a write and an admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.settings import MqttAddress
from http_api.app import create_app
from http_api.settings import Settings as ApiSettings
from http_api.tokens import create_token
from tests.http_helpers import Api
from tests.services import Mosquitto


@pytest.fixture
def api_settings(database_url: str, mosquitto: Mosquitto) -> ApiSettings:
    return ApiSettings.from_env({}).replace(
        database_url=database_url, mqtt=MqttAddress.parse(mosquitto.url)
    )


@pytest.fixture
async def api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(api_settings)))
    async with client:
        _, read_token = await create_token(api_settings.database_url, "read", "dashboard")
        _, write_token = await create_token(api_settings.database_url, "write", "ops")
        _, admin_token = await create_token(api_settings.database_url, "admin", "registry")
        yield Api(client, api_settings, read_token, write_token, admin_token)
