"""Operations: health for load balancers and monitors, and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from http_api import queries
from http_api.keys import POOL, PUBLISHER, SETTINGS
from http_api.openapi import document
from http_api.render import iso, json


async def health(request: web.Request) -> web.Response:
    """200 if the database and broker are reachable and the gateway keeps up; else 503."""
    settings = request.app[SETTINGS]
    database_ok, latest = True, None
    try:
        latest = await queries.gateway_latest(request.app[POOL])
    except (psycopg.Error, PoolTimeout):
        database_ok = False
    lag = None if latest is None else (datetime.now(UTC) - latest).total_seconds()
    gateway_ok = database_ok and (lag is None or lag <= settings.max_gateway_lag_s)
    broker_ok = request.app[PUBLISHER].connected.is_set()
    healthy = database_ok and broker_ok and gateway_ok
    return json(
        {
            "status": "ok" if healthy else "unavailable",
            "database": {"ok": database_ok},
            "broker": {"ok": broker_ok},
            "gateway": {
                "ok": gateway_ok,
                "lagSeconds": lag,
                "latestReceivedAt": iso(latest),
                "maxLagSeconds": settings.max_gateway_lag_s,
            },
        },
        status=200 if healthy else 503,
    )


async def openapi(request: web.Request) -> web.Response:
    return json(document())
