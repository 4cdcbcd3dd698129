"""``create_app(settings)``: the aiohttp application, its middlewares and its resources."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.database import apply_schema, open_pool
from http_api.access_log import log_answer
from http_api.auth import require_token
from http_api.background import BackgroundTasks
from http_api.fleet_cache import FLEET_CACHE, fleet_view_cache
from http_api.keys import BACKGROUND, POOL, PUBLISHER, SETTINGS, TOKEN_CACHE
from http_api.limits import TokenLimits, limit_per_token
from http_api.metrics import API_METRICS, ApiMetrics, count_answer
from http_api.middleware import (
    cors,
    except_for,
    known_query_parameters,
    request_id_and_errors,
    timed,
)
from http_api.publisher import Publisher
from http_api.read_pools import READ_POOLS, open_read_pools, remember_writes
from http_api.routes import setup_routes
from http_api.settings import Settings
from http_api.token_cache import TokenCache, listen_for_token_changes
from http_api.views_page import is_page

logger = logging.getLogger(__name__)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await apply_schema(settings.database_url)  # so that the API also works on its own
    # A dashboard's request should not wait for a liveness round trip on a connection that
    # answered a moment ago; after a database restart such a request gets a 503 to retry.
    async with open_pool(
        settings.database_url, settings.db_pool_size, "fleetgate-api", fresh_s=1.0
    ) as pool:
        app[POOL] = pool
        yield


async def _read_pools(app: web.Application) -> AsyncIterator[None]:
    """The replicas' pools (none without DATABASE_READ_URL: every read on the primary), and
    their watcher."""
    settings = app[SETTINGS]
    async with open_read_pools(
        app[POOL],
        settings.database_read_urls,
        settings.db_read_pool_size,
        settings.max_replica_lag_s,
        settings.read_your_writes_s,
    ) as pools:
        app[READ_POOLS] = pools
        task = app[BACKGROUND].start(pools.watch(), "replica-watcher") if pools.replicas else None
        yield
        if task is not None:
            await app[BACKGROUND].stop(task)


async def _broker(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    publisher = Publisher(settings.mqtt, settings.publish_timeout_s)
    app[PUBLISHER] = publisher
    task = app[BACKGROUND].start(publisher.run(), "mqtt-publisher")
    try:
        async with asyncio.timeout(settings.publish_timeout_s):
            await publisher.connected.wait()
    except TimeoutError:
        logger.warning("broker not reachable yet; ingestion answers 503 until it is")
    yield
    await app[BACKGROUND].stop(task)


async def _token_changes(app: web.Application) -> AsyncIterator[None]:
    """Keep the token cache told of every revoke; until it listens, the cache stays off."""
    listener = listen_for_token_changes(app[TOKEN_CACHE], app[SETTINGS].database_url)
    task = app[BACKGROUND].start(listener, "token-change-listener")
    yield
    await app[BACKGROUND].stop(task)


async def _fleet_cache(app: web.Application) -> AsyncIterator[None]:
    async with fleet_view_cache(app[SETTINGS].fleet_cache_s) as cache:
        app[FLEET_CACHE] = cache
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[
            # outermost: each answer as sent, errors included, counted (and logged)
            timed(count_answer, *([log_answer] if settings.access_log else [])),
            cors(settings.cors_origins),
            request_id_and_errors,
            except_for(is_page, require_token),  # the dashboard's files hold no data
            *([remember_writes] if settings.database_read_urls else []),
            limit_per_token(
                TokenLimits(settings.token_concurrency, settings.token_rate, settings.token_burst)
            ),
            known_query_parameters,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[API_METRICS] = ApiMetrics(lambda: app.get(POOL), lambda: app.get(READ_POOLS))
    app[BACKGROUND] = BackgroundTasks()
    app[TOKEN_CACHE] = TokenCache(settings.token_cache_s)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_read_pools)
    app.cleanup_ctx.append(_fleet_cache)
    if settings.token_cache_s > 0:
        app.cleanup_ctx.append(_token_changes)
    app.cleanup_ctx.append(_broker)
    setup_routes(app)
    return app
