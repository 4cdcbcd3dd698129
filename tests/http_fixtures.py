"""Fixtures of the HTTP API tests (a pytest plugin: ``pytest_plugins = ["tests.http_fixtures"]``):
the app running on a test server, with a read, a write and an admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.settings import MqttAddress
from http_api.settings import Settings as ApiSettings
from tests.http_helpers import Api, serving
from tests.services import Mosquitto


@pytest.fixture
def api_settings(database_url: str, mosquitto: Mosquitto) -> ApiSettings:
    return ApiSettings.from_env({}).replace(
        database_url=database_url,
        mqtt=MqttAddress.parse(mosquitto.url),
        enrolment="open",  # most tests post readings of devices nobody registered
        token_rate=0.0,  # tests send back to back, faster than any dashboard: test_http_limits
    )


@pytest.fixture
async def api(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async with serving(api_settings) as running:
        yield running
