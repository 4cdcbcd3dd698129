"""The OpenAPI 3.1 document of the API, as served; a test checks it against the routes."""

from __future__ import annotations

from typing import Any, Final

from gateway.alert_rules import RULES
from http_api.openapi_schemas import SCHEMAS, TIME, ref
from http_api.views_alerts import STATES


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


def _path(name: str, description: str) -> dict[str, Any]:
    schema = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_WINDOW_PARAMS: Final = [
    _query("from", TIME, "Window start (RFC 3339, inclusive); default: `to` minus 24 hours."),
    _query("to", TIME, "Window end (exclusive), clamped to now; default: now."),
]
_PAGE_PARAMS: Final = [
    _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "Items per page.",
    ),
    _query("cursor", {"type": "string"}, "nextCursor of the previous page."),
]
_VEHICLE: Final = _path("vehicleId", "Vehicle id, as in its MQTT topic.")
_COMMON_ERRORS: Final = {
    "401": _error("Missing, unknown or revoked bearer token."),
    "403": _error("The token's scope does not allow this."),
    "503": _error("The database is unreachable (code databaseUnavailable; Retry-After)."),
}


def _op(
    summary: str,
    ok: tuple[str, str, str],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: dict[str, str] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    status, schema, description = ok
    responses: dict[str, Any] = {status: _json(ref(schema), description)}
    if params or body:
        responses["400"] = _error("A malformed parameter or body, named in the error.")
    for code, text in (errors or {}).items():
        responses[code] = _error(text)
    operation: dict[str, Any] = {"summary": summary, "parameters": params or []}
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref(body)
                    if body != "Readings"
                    else {"type": "array", "items": ref("Reading")}
                }
            },
        }
        responses.setdefault("413", _error("Body over MAX_BODY_BYTES."))
    if public:
        operation["security"] = []
    else:
        for code, error in _COMMON_ERRORS.items():
            responses.setdefault(code, error)
    responses["500"] = _error("Unexpected error; the body and X-Request-Id carry the request id.")
    operation["responses"] = responses
    return operation


_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/health": {
        "get": _op(
            "Database, broker and gateway lag",
            ("200", "Health", "Healthy."),
            errors={"503": "Something is down (body says what)."},
            public=True,
        )
    },
    "/openapi.json": {
        "get": {
            **_op("This document", ("200", "Error", "OpenAPI 3.1")),
            "responses": {"200": {"description": "OpenAPI 3.1 document"}, **_COMMON_ERRORS},
        }
    },
    "/v1/status/overview": {"get": _op("Fleet now", ("200", "Overview", "Counts"))},
    "/v1/status/vehicles": {
        "get": _op(
            "Vehicles now",
            ("200", "VehicleList", "A page"),
            params=[
                _query("charging", {"type": "boolean"}, "Only vehicles (not) charging now."),
                _query(
                    "warning", {"type": "boolean"}, "Only vehicles with(out) a temperature warning."
                ),
                *_PAGE_PARAMS,
            ],
        )
    },
    "/v1/status/vehicle/{vehicleId}": {
        "get": _op(
            "A vehicle's latest reading",
            ("200", "VehicleStatus", "Status"),
            params=[_VEHICLE],
            errors={"404": "Unknown vehicle."},
        )
    },
    "/v1/status/meter/{meterId}": {
        "get": _op(
            "A meter's latest reading",
            ("200", "MeterStatus", "Status"),
            params=[_path("meterId", "Meter id, as in its MQTT topic.")],
            errors={"404": "Unknown meter."},
        )
    },
    "/v1/links": {
        "get": _op("Current links", ("200", "Link", "{links: [Link]}")),
        "post": _op(
            "Link a vehicle to the meter feeding its charger",
            ("201", "Link", "Linked"),
            body="NewLink",
            errors={
                "404": "Unknown vehicle or meter.",
                "409": "Meter in use, or overlapping link.",
            },
        ),
    },
    "/v1/links/{vehicleId}": {
        "get": _op(
            "A vehicle's current link and history",
            ("200", "Link", "Links"),
            params=[_VEHICLE],
            errors={"404": "Unknown vehicle."},
        ),
        "delete": _op(
            "End a vehicle's current link now",
            ("200", "Link", "The ended link"),
            params=[_VEHICLE],
            errors={"404": "Unknown vehicle or no current link."},
        ),
    },
    "/v1/analytics/performance/{vehicleId}": {
        "get": _op(
            "Charging efficiency over a window",
            ("200", "Performance", "Figures"),
            params=[_VEHICLE, *_WINDOW_PARAMS],
            errors={"404": "Unknown vehicle."},
        )
    },
    "/v1/analytics/trend/{vehicleId}": {
        "get": _op(
            "The same figures per UTC hour",
            ("200", "Trend", "Hours"),
            params=[_VEHICLE, *_WINDOW_PARAMS],
            errors={"404": "Unknown vehicle."},
        )
    },
    "/v1/analytics/fleet": {
        "get": _op(
            "Each vehicle with its own meters; the worst below a threshold",
            ("200", "Fleet", "Totals and a page of vehicles"),
            params=[
                *_WINDOW_PARAMS,
                _query("below", {"type": "number"}, "Threshold (default EFFICIENCY_GOOD)."),
                *_PAGE_PARAMS,
            ],
        )
    },
    "/v1/alerts": {
        "get": _op(
            "Alert history, newest first (raisedAt, then alertId, descending)",
            ("200", "AlertList", "A page"),
            params=[
                _query(
                    "state",
                    {"type": "string", "enum": list(STATES)},
                    "Only active or only cleared alerts.",
                ),
                _query(
                    "deviceId",
                    {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                    "Only alerts of this meter or vehicle.",
                ),
                _query(
                    "rule", {"type": "string", "enum": list(RULES)}, "Only alerts of this rule."
                ),
                _query("from", TIME, "Raised at or after (RFC 3339); default: no bound."),
                _query("to", TIME, "Raised before (RFC 3339); default: no bound."),
                *_PAGE_PARAMS,
            ],
        )
    },
    "/v1/telemetry": {
        "post": _op(
            "Ingest one reading",
            ("202", "BatchResult", "Published; the broker acknowledged"),
            body="Reading",
            errors={
                "413": "Body over MAX_BODY_BYTES, or a reading over MAX_PAYLOAD_BYTES "
                "(readingTooLarge), which the gateway would dead-letter.",
                "503": "Broker (brokerUnavailable) or database (databaseUnavailable) down.",
            },
        )
    },
    "/v1/telemetry/batch": {
        "post": _op(
            "Ingest readings",
            ("202", "BatchResult", "All published"),
            body="Readings",
            errors={
                "207": "Some rejected (reason per reading; a reading over MAX_PAYLOAD_BYTES is "
                "one of them).",
                "503": "Broker (brokerUnavailable) or database (databaseUnavailable) down.",
            },
        )
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fleetgate HTTP API", "version": "1.0.0"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _PATHS,
    }
