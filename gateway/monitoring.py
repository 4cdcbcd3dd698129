"""The gateway's own HTTP endpoint: ``/metrics`` for Prometheus; ``/health/live``,
``/health/ready`` and ``/health`` for orchestrators and people.

Served from the gateway's event loop, so a gateway whose loop is stuck stops answering instead of
reporting itself healthy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Status = Literal["ok", "degraded", "down"]


@dataclasses.dataclass(frozen=True, slots=True)
class HealthReport:
    """What the gateway knows of itself. Ready: subscribed to the broker and able to write; the
    summary is down when it is not ready (503), degraded while its heartbeat is not recorded (the
    API cannot see it; 200), else ok."""

    broker_connected: bool
    database_error: str | None  # why it cannot write, while it cannot (or has not started to)
    heartbeat_error: str | None  # why its latest heartbeat was not recorded, while they fail
    backlog: int  # readings taken from the broker, not yet committed
    replica: str = ""  # this replica's name; empty for a lone gateway (one session, no name)
    sessions: list[int] = dataclasses.field(default_factory=list)  # the sessions it owns
    leader: bool = False  # it judges and publishes alerts
    replicas: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # all, as locked

    def not_ready(self) -> list[str]:
        reasons = []
        if not self.broker_connected:
            reasons.append("not connected to the broker")
        if self.database_error is not None:
            reasons.append(f"cannot write to the database: {self.database_error}")
        return reasons

    @property
    def status(self) -> Status:
        if self.not_ready():
            return "down"
        return "degraded" if self.heartbeat_error is not None else "ok"

    def readiness(self) -> tuple[dict[str, object], int]:
        reasons = self.not_ready()
        body = {"status": "notReady" if reasons else "ready", "reasons": reasons, **self._checks()}
        return body, 503 if reasons else 200

    def summary(self) -> tuple[dict[str, object], int]:
        reasons = self.not_ready()
        if self.heartbeat_error is not None:
            reasons.append(f"heartbeat not recorded: {self.heartbeat_error}")
        body: dict[str, object] = {
            "status": self.status,
            "reasons": reasons,
            **self._checks(),
            "heartbeat": {"ok": self.heartbeat_error is None, "error": self.heartbeat_error},
            "backlog": self.backlog,
        }
        if self.replica:  # one of several replicas: which sessions each holds, who leads
            body["replica"] = {
                "name": self.replica,
                "sessions": self.sessions,
                "leader": self.leader,
            }
            body["replicas"] = [
                {"name": name, "sessions": sessions} for name, sessions in self.replicas.items()
            ]
        return body, 503 if self.status == "down" else 200

    def _checks(self) -> dict[str, object]:
        return {
            "broker": {"ok": self.broker_connected},
            "database": {"ok": self.database_error is None, "error": self.database_error},
        }


@contextlib.asynccontextmanager
async def serve_monitoring(
    host: str, port: int, registry: CollectorRegistry, health: Callable[[], HealthReport]
) -> AsyncIterator[None]:
    """Serve ``/metrics`` and the health endpoints on ``host:port`` while the context is open."""

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(_: web.Request) -> web.Response:
        body, status = health().readiness()
        return web.json_response(body, status=status)

    async def summary(_: web.Request) -> web.Response:
        body, status = health().summary()
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health", summary)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()
