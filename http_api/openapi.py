"""The OpenAPI 3.1 document of the API, as served; a test checks it against the routes."""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from gateway.alert_rules import RULES
from http_api.health import HealthLiveness, HealthReadiness, HealthSummary
from http_api.openapi_devices import DEVICE_PATHS, DEVICE_SCHEMAS
from http_api.openapi_history import HISTORY_PATHS
from http_api.openapi_operations import (
    COMMON_ERRORS,
    DEVICE_ID,
    PAGE_PARAMS,
    VEHICLE,
    WINDOW_PARAMS,
    json_content,
    operation,
    path_param,
    query_param,
    with_headers,
)
from http_api.openapi_schemas import SCHEMAS, TIME, ref
from http_api.views_alerts import ALERT_ID_PATTERN, DEPRECATED_STATES, STATES
from http_api.views_ingest import Accepted, BatchResult

# Generated from the Structs ingestion answers with, so the two cannot drift.
_, _INGEST_SCHEMAS = msgspec.json.schema_components(
    (Accepted, BatchResult), ref_template="#/components/schemas/{name}"
)
_, _HEALTH_SCHEMAS = msgspec.json.schema_components(
    (HealthSummary, HealthReadiness, HealthLiveness), ref_template="#/components/schemas/{name}"
)
_INVALID_READING: Final = (
    "A reading the gateway would dead-letter (invalidReading, with the gateway's reason and the "
    "field if one is at fault), or a body that is not one."
)
_UNKNOWN_DEVICE: Final = (
    "ENROLMENT=closed (the default) and the device is not registered, or disabled "
    "(unknownDevice; parameter meterId or vehicleId; the gateway's reason 'unknown device: "
    "...'). Nothing was published."
)
_BROKER_DOWN: Final = "Broker (brokerUnavailable) or database (databaseUnavailable) down."


def _health() -> dict[str, Any]:
    described = operation(
        "Summary: database, broker, each gateway's heartbeat; ok, degraded or down",
        ("200", "HealthSummary", "ok, or degraded (reasons say why): the API serves."),
        public=True,
    )
    described["responses"]["503"] = json_content(
        ref("HealthSummary"), "down: the database is unreachable (reasons say why)."
    )
    return described


def _readiness() -> dict[str, Any]:
    described = operation(
        "Readiness: the database and the broker are reachable",
        ("200", "HealthReadiness", "Ready."),
        public=True,
    )
    described["responses"]["503"] = json_content(
        ref("HealthReadiness"), "Not ready: reasons name what is unreachable."
    )
    return described


def _create_link() -> dict[str, Any]:
    described = operation(
        "Link a vehicle to the meter feeding its charger",
        ("201", "Link", "Linked"),
        body="NewLink",
        errors={
            "404": "Unknown vehicle or meter.",
            "409": "Meter in use, or overlapping link.",
        },
    )
    described["responses"]["200"] = json_content(
        ref("Link"), "The vehicle is linked to that meter already: nothing changed."
    )
    return described


def _fleet() -> dict[str, Any]:
    described = operation(
        "Each vehicle with its own meters; the worst below a threshold",
        ("200", "Fleet", "Totals and a page of vehicles"),
        params=[
            *WINDOW_PARAMS,
            query_param(
                "below",
                {"type": "number", "minimum": 0, "maximum": 10},
                "Threshold (default EFFICIENCY_GOOD).",
            ),
            *PAGE_PARAMS,
        ],
    )
    described["description"] = (
        "Without from, to, below, limit or cursor (what dashboards poll), the view of the "
        "current FLEET_CACHE_S period (a UTC minute) is computed once, by the first request of "
        "the period, and served to every request within it: its computedAt says when, Age how "
        "long ago, Cache-Control: max-age its lifetime."
    )
    described["responses"]["200"] = with_headers(
        described["responses"]["200"],
        Age=("integer", "The default view only: seconds since it was computed."),
        Cache_Control=("string", "The default view only: max-age=<its lifetime in seconds>."),
    )
    return described


def _ingest_batch() -> dict[str, Any]:
    described = operation(
        "Ingest readings",
        ("202", "BatchResult", "All published"),
        body="Readings",
        errors={"503": _BROKER_DOWN},
    )
    responses = described["responses"]
    responses["207"] = json_content(
        ref("BatchResult"),
        "Some published, the others rejected: per reading the code a single POST would answer "
        "(invalidReading, readingTooLarge, or unknownDevice under ENROLMENT=closed), the reason "
        "and the field at fault.",
    )
    responses["400"] = json_content(
        {"oneOf": [ref("BatchResult"), ref("Error")]},
        "None published (a BatchResult, each reading rejected), or the body is not an array of "
        "1 to MAX_BATCH_READINGS readings (an Error, invalidBody).",
    )
    return described


def _acknowledge() -> dict[str, Any]:
    described = operation(
        "Acknowledge a raised alert (who and when are kept, and published to its topic)",
        ("200", "Alert", "Acknowledged now, or already: the first acknowledgement"),
        params=[
            path_param(
                "alertId", "The alert's id.", {"type": "string", "pattern": ALERT_ID_PATTERN}
            )
        ],
        body="AckNote",
        errors={
            "404": "No such alert.",
            "409": "The alert was cleared before anyone acknowledged it.",
        },
    )
    described["requestBody"]["required"] = False  # no body, or {"note": ...}
    described["description"] = (
        "Records the token's name and id (acknowledgedBy) and the time, in the alert and as an "
        "'acknowledged' event of its history; the gateway publishes the alert again, retained, "
        "on its MQTT topic with acknowledgedAt and acknowledgedBy. Idempotent: a second "
        "acknowledgement answers 200 with the first."
    )
    return described


_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/health": {"get": _health()},
    "/health/live": {
        "get": operation(
            "Liveness: the process answers (for restart decisions)",
            ("200", "HealthLiveness", "Alive."),
            public=True,
        )
    },
    "/health/ready": {"get": _readiness()},
    "/metrics": {
        "get": {
            **operation("Prometheus metrics", ("200", "Error", "Prometheus text format")),
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **COMMON_ERRORS,
            },
        }
    },
    "/openapi.json": {
        "get": {
            **operation("This document", ("200", "Error", "OpenAPI 3.1")),
            "responses": {
                "200": json_content(
                    {"type": "object", "required": ["openapi", "info", "paths", "components"]},
                    "OpenAPI 3.1 document",
                ),
                **COMMON_ERRORS,
            },
        }
    },
    "/v1/status/overview": {"get": operation("Fleet now", ("200", "Overview", "Counts"))},
    "/v1/status/vehicles": {
        "get": operation(
            "Vehicles now",
            ("200", "VehicleList", "A page"),
            params=[
                query_param("charging", {"type": "boolean"}, "Only vehicles (not) charging now."),
                query_param(
                    "warning", {"type": "boolean"}, "Only vehicles with(out) a temperature warning."
                ),
                *PAGE_PARAMS,
            ],
        )
    },
    "/v1/status/meters": {
        "get": operation(
            "Meters now",
            ("200", "MeterList", "A page, by meter id"),
            params=[
                query_param("online", {"type": "boolean"}, "Only meters (not) online now."),
                query_param(
                    "linked", {"type": "boolean"}, "Only meters (not) linked to a vehicle now."
                ),
                *PAGE_PARAMS,
            ],
        )
    },
    "/v1/status/vehicle/{vehicleId}": {
        "get": operation(
            "A vehicle's latest reading",
            ("200", "VehicleStatus", "Status"),
            params=[VEHICLE],
            errors={"404": "Unknown vehicle."},
        )
    },
    "/v1/status/meter/{meterId}": {
        "get": operation(
            "A meter's latest reading",
            ("200", "MeterStatus", "Status"),
            params=[path_param("meterId", "Meter id, as in its MQTT topic.")],
            errors={"404": "Unknown meter."},
        )
    },
    "/v1/links": {
        "get": operation(
            "Current links",
            ("200", "LinkList", "A page of the links that hold now, by vehicle id"),
            params=PAGE_PARAMS,
        ),
        "post": _create_link(),
    },
    "/v1/links/{vehicleId}": {
        "get": operation(
            "A vehicle's current link and history",
            ("200", "VehicleLinks", "Its current link (or null) and all its links, newest first"),
            params=[VEHICLE],
            errors={"404": "Unknown vehicle."},
        ),
        "delete": operation(
            "End a vehicle's current link now",
            ("200", "Link", "The ended link"),
            params=[VEHICLE],
            errors={"404": "Unknown vehicle or no current link."},
        ),
    },
    "/v1/analytics/performance/{vehicleId}": {
        "get": operation(
            "Charging efficiency over a window",
            ("200", "Performance", "Figures"),
            params=[VEHICLE, *WINDOW_PARAMS],
            errors={"404": "Unknown vehicle."},
        )
    },
    "/v1/analytics/trend/{vehicleId}": {
        "get": operation(
            "The same figures per UTC hour",
            ("200", "Trend", "Hours"),
            params=[VEHICLE, *WINDOW_PARAMS],
            errors={"404": "Unknown vehicle."},
        )
    },
    "/v1/analytics/fleet": {"get": _fleet()},
    "/v1/alerts": {
        "get": operation(
            "Alert history, newest first (raisedAt, then alertId, descending)",
            ("200", "AlertList", "A page"),
            params=[
                query_param(
                    "state",
                    {"type": "string", "enum": [*STATES, *DEPRECATED_STATES]},
                    "Only raised (not cleared yet) or only cleared alerts; 'active', 0.1.0's "
                    "word, is taken as raised (deprecated).",
                ),
                query_param("acknowledged", {"type": "boolean"}, "Only alerts (not) acknowledged."),
                query_param("deviceId", DEVICE_ID, "Only alerts of this meter or vehicle."),
                query_param(
                    "rule", {"type": "string", "enum": list(RULES)}, "Only alerts of this rule."
                ),
                query_param("from", TIME, "Raised at or after (RFC 3339); default: no bound."),
                query_param("to", TIME, "Raised before (RFC 3339); default: no bound."),
                *PAGE_PARAMS,
            ],
        )
    },
    "/v1/alerts/{alertId}/ack": {"post": _acknowledge()},
    "/v1/telemetry": {
        "post": operation(
            "Ingest one reading",
            ("202", "Accepted", "Published; the broker acknowledged"),
            body="Reading",
            errors={
                "400": _INVALID_READING,
                "413": "Body over MAX_BODY_BYTES, or a reading over MAX_PAYLOAD_BYTES "
                "(readingTooLarge), which the gateway would dead-letter.",
                "422": _UNKNOWN_DEVICE,
                "503": _BROKER_DOWN,
            },
        )
    },
    "/v1/telemetry/batch": {"post": _ingest_batch()},
}


# Each operation's name, for clients generated from this document.
OPERATION_IDS: Final = {
    ("get", "/health"): "getHealth",
    ("get", "/health/live"): "getLiveness",
    ("get", "/health/ready"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
    ("get", "/openapi.json"): "getOpenApi",
    ("get", "/v1/status/overview"): "getOverview",
    ("get", "/v1/status/vehicles"): "listVehicleStatus",
    ("get", "/v1/status/vehicle/{vehicleId}"): "getVehicleStatus",
    ("get", "/v1/status/meter/{meterId}"): "getMeterStatus",
    ("get", "/v1/links"): "listLinks",
    ("post", "/v1/links"): "createLink",
    ("get", "/v1/links/{vehicleId}"): "getVehicleLinks",
    ("delete", "/v1/links/{vehicleId}"): "endLink",
    ("get", "/v1/analytics/performance/{vehicleId}"): "getPerformance",
    ("get", "/v1/analytics/trend/{vehicleId}"): "getTrend",
    ("get", "/v1/analytics/fleet"): "getFleet",
    ("get", "/v1/alerts"): "listAlerts",
    ("post", "/v1/alerts/{alertId}/ack"): "acknowledgeAlert",
    ("get", "/v1/status/meters"): "listMeterStatus",
    ("get", "/v1/readings/meter/{meterId}"): "listMeterReadings",
    ("get", "/v1/readings/vehicle/{vehicleId}"): "listVehicleReadings",
    ("get", "/v1/dead-letters"): "listDeadLetters",
    ("post", "/v1/telemetry"): "ingestReading",
    ("post", "/v1/telemetry/batch"): "ingestBatch",
    ("post", "/v1/devices"): "createDevice",
    ("get", "/v1/devices"): "listDevices",
    ("post", "/v1/devices/import"): "importDevices",
    ("get", "/v1/devices/{kind}/{id}"): "getDevice",
    ("patch", "/v1/devices/{kind}/{id}"): "updateDevice",
    ("delete", "/v1/devices/{kind}/{id}"): "deleteDevice",
    ("post", "/v1/devices/{kind}/{id}/rotate-secret"): "rotateDeviceSecret",
    ("post", "/v1/devices/{kind}/{id}/disable"): "disableDevice",
}


def _operation_id(method: str, path: str) -> str:
    """The operation's name in OPERATION_IDS (a test wants every operation there), else one
    made of its method and path."""
    words = [word for word in re.split(r"[^A-Za-z0-9]+", path) if word]
    return OPERATION_IDS.get(
        (method, path), method + "".join(word[0].upper() + word[1:] for word in words)
    )


def _with_operation_ids(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        path: {
            method: {"operationId": _operation_id(method, path), **described}
            for method, described in operations.items()
        }
        for path, operations in paths.items()
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetgate HTTP API",
            "version": "1.0.0",
            "description": "Live status, links, charging analytics, alerts, ingestion and the "
            'device registry of an EV fleet. Errors are {"error": {"code", "message", '
            '"parameter"?}}; numbers are rounded to what they mean (kWh to the Wh, °C and V '
            "to 0.1, ratios to 4 decimals).",
        },
        "servers": [{"url": "/", "description": "The API that serves this document."}],
        "components": {
            "schemas": {**SCHEMAS, **_INGEST_SCHEMAS, **_HEALTH_SCHEMAS, **DEVICE_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _with_operation_ids({**_PATHS, **HISTORY_PATHS, **DEVICE_PATHS}),
    }


def query_parameters() -> dict[tuple[str, str], frozenset[str]]:
    """The query parameters each operation documents, by (METHOD, path template): the API
    refuses any other (http_api/middleware.py), so the document is also the check."""
    return {
        (method.upper(), path): frozenset(
            parameter["name"]
            for parameter in described.get("parameters", [])
            if parameter["in"] == "query"
        )
        for path, operations in document()["paths"].items()
        for method, described in operations.items()
    }
