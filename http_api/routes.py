"""The URL table."""

from __future__ import annotations

from aiohttp import web

from http_api import (
    metrics,
    views_alerts,
    views_analytics,
    views_dead_letters,
    views_devices,
    views_ingest,
    views_links,
    views_operations,
    views_page,
    views_readings,
    views_status,
)


def setup_routes(app: web.Application) -> None:
    app.add_routes(
        [
            web.get("/", views_page.index, allow_head=False),  # the dashboard: no token
            web.get("/static/{name}", views_page.static_file, allow_head=False),
            web.get("/health", views_operations.health, allow_head=False),
            web.get("/health/live", views_operations.live, allow_head=False),
            web.get("/health/ready", views_operations.ready, allow_head=False),
            web.get("/metrics", metrics.serve_metrics, allow_head=False),
            web.get("/openapi.json", views_operations.openapi, allow_head=False),
            web.get("/v1/status/overview", views_status.overview, allow_head=False),
            web.get("/v1/status/vehicles", views_status.vehicles, allow_head=False),
            web.get("/v1/status/vehicle/{vehicleId}", views_status.vehicle, allow_head=False),
            web.get("/v1/status/meter/{meterId}", views_status.meter, allow_head=False),
            web.get("/v1/status/meters", views_status.meters, allow_head=False),
            web.get(
                "/v1/readings/meter/{meterId}", views_readings.meter_readings, allow_head=False
            ),
            web.get(
                "/v1/readings/vehicle/{vehicleId}",
                views_readings.vehicle_readings,
                allow_head=False,
            ),
            web.get("/v1/dead-letters", views_dead_letters.dead_letters, allow_head=False),
            web.post("/v1/links", views_links.create),
            web.get("/v1/links", views_links.current, allow_head=False),
            web.get("/v1/links/{vehicleId}", views_links.of_vehicle, allow_head=False),
            web.delete("/v1/links/{vehicleId}", views_links.end),
            web.get(
                "/v1/analytics/performance/{vehicleId}",
                views_analytics.performance,
                allow_head=False,
            ),
            web.get("/v1/analytics/trend/{vehicleId}", views_analytics.trend, allow_head=False),
            web.get("/v1/analytics/fleet", views_analytics.fleet, allow_head=False),
            web.get("/v1/alerts", views_alerts.alerts, allow_head=False),
            web.post("/v1/alerts/{alertId}/ack", views_alerts.acknowledge_alert),
            web.post("/v1/telemetry", views_ingest.one),
            web.post("/v1/telemetry/batch", views_ingest.batch),
            web.post("/v1/devices", views_devices.create),
            web.get("/v1/devices", views_devices.listing, allow_head=False),
            web.post("/v1/devices/import", views_devices.import_),
            web.get("/v1/devices/{kind}/{id}", views_devices.show, allow_head=False),
            web.patch("/v1/devices/{kind}/{id}", views_devices.update),
            web.delete("/v1/devices/{kind}/{id}", views_devices.delete),
            web.post("/v1/devices/{kind}/{id}/rotate-secret", views_devices.rotate_secret),
            web.post("/v1/devices/{kind}/{id}/disable", views_devices.disable),
        ]
    )
