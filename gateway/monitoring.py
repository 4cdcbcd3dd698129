"""The gateway's own HTTP endpoint: ``/metrics`` for Prometheus and ``/health`` for orchestrators.

Served from the gateway's event loop, so a gateway whose loop is stuck stops answering instead of
reporting itself healthy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclasses.dataclass(frozen=True, slots=True)
class HealthReport:
    broker_connected: bool
    database_error: str | None  # why the last write failed, while it fails

    @property
    def ok(self) -> bool:
        return self.broker_connected and self.database_error is None

    def body(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "unavailable",
            "broker": {"ok": self.broker_connected},
            "database": {"ok": self.database_error is None, "error": self.database_error},
        }


@contextlib.asynccontextmanager
async def serve_monitoring(
    host: str, port: int, registry: CollectorRegistry, health: Callable[[], HealthReport]
) -> AsyncIterator[None]:
    """Serve ``/metrics`` and ``/health`` on ``host:port`` while the context is open."""

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def health_view(_: web.Request) -> web.Response:
        report = health()
        return web.json_response(report.body(), status=200 if report.ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()
