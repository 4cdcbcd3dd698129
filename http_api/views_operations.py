"""Operations: health for orchestrators, load balancers and people, and the OpenAPI document.
No token needed for health (http_api/auth.py); what each answer means: http_api/health.py."""

from __future__ import annotations

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from http_api import health as judged
from http_api.keys import POOL, PUBLISHER, SETTINGS
from http_api.openapi import document
from http_api.read_pools import READ_POOLS
from http_api.render import json


async def live(request: web.Request) -> web.Response:
    """200 while the process answers: for restart decisions, never for a dependency's state."""
    return json(judged.HealthLiveness())


async def ready(request: web.Request) -> web.Response:
    """200 if the database and the broker (HTTP ingestion publishes to it) are reachable, else
    503 naming what is not."""
    database = await judged.database_check(request.app[POOL])
    broker = judged.broker_check(request.app[PUBLISHER].connected.is_set())
    answer = judged.readiness(database, broker)
    return json(answer, status=200 if answer.status == "ready" else 503)


async def health(request: web.Request) -> web.Response:
    """The summary: ok or degraded (200), down (503, the database unreachable), with reasons,
    each gateway's heartbeat and each read replica's state and lag."""
    settings = request.app[SETTINGS]
    broker = judged.broker_check(request.app[PUBLISHER].connected.is_set())
    database = judged.HealthCheck(ok=True)
    gateways: list[judged.GatewayHeartbeat] = []
    latest = None
    try:
        gateways, latest = await judged.gateway_heartbeats(
            request.app[POOL], settings.heartbeat_max_age_s, settings.heartbeat_forget_s
        )
    except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as exc:
        database = judged.HealthCheck(ok=False, error=judged.one_line(exc))
    replicas = request.app[READ_POOLS].health()
    summary = judged.summarise(
        database, broker, gateways, settings.heartbeat_max_age_s, latest, replicas=replicas
    )
    return json(summary, status=503 if summary.status == "down" else 200)


async def openapi(request: web.Request) -> web.Response:
    return json(document())
