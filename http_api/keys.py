"""Typed keys of what the application holds: settings, database pool, publisher, token cache,
background tasks."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from http_api.background import BackgroundTasks
from http_api.publisher import Publisher
from http_api.settings import Settings
from http_api.token_cache import TokenCache

SETTINGS: Final = web.AppKey("settings", Settings)
POOL: Final = web.AppKey("pool", AsyncConnectionPool)
PUBLISHER: Final = web.AppKey("publisher", Publisher)
TOKEN_CACHE: Final = web.AppKey("token_cache", TokenCache)
BACKGROUND: Final = web.AppKey("background", BackgroundTasks)
