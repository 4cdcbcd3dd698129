"""What arrived, in the OpenAPI document: a device's raw readings (JSON or CSV) and dead letters
(their schemas are generated with the others, from http_api/history_bodies.py)."""

from __future__ import annotations

from typing import Any, Final

from http_api.openapi_operations import (
    DEVICE_ID,
    PAGE_PARAMS,
    WINDOW_PARAMS,
    operation,
    path_param,
    query_param,
    with_headers,
)
from http_api.views_dead_letters import DEVICE_KINDS, REASON_MAX
from http_api.views_readings import CSV_LIMIT, CSV_TYPE, JSON_LIMIT

_CSV_COLUMNS: Final = {
    "meter": "takenAt,consumedAc,voltage",
    "vehicle": "takenAt,soc,deliveredDc,batteryTemp",
}


def _readings(kind: str, parameter: str, schema: str) -> dict[str, Any]:
    described = operation(
        f"A {kind}'s readings over a window, oldest first: JSON or CSV",
        ("200", schema, "A page of readings"),
        params=[
            path_param(parameter, f"{kind.capitalize()} id, as in its MQTT topic."),
            *WINDOW_PARAMS,
            query_param(
                "format",
                {"type": "string", "enum": ["json", "csv"]},
                "csv: text/csv for export (also chosen by an Accept header naming text/csv and "
                "not application/json); default json.",
            ),
            query_param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": CSV_LIMIT},
                f"Readings per page: JSON 1-{JSON_LIMIT} (default 100), CSV 1-{CSV_LIMIT:,} "
                f"(default {CSV_LIMIT:,}).",
            ),
            query_param("cursor", {"type": "string"}, "The previous page's nextCursor."),
        ],
        errors={"404": f"Unknown {kind}."},
    )
    ok = described["responses"]["200"]
    ok["content"][CSV_TYPE] = {
        "schema": {"type": "string"},
        "example": f"{_CSV_COLUMNS[kind]}\r\n",
    }
    described["responses"]["200"] = with_headers(
        ok,
        Link=(
            "string",
            'CSV only, when the page was cut at limit: <the next page\'s URL>; rel="next".',
        ),
        Content_Disposition=("string", "CSV only: attachment, with a file name."),
    )
    described["description"] = (
        f"The readings stored with takenAt in [from, to) (the API's window rules), as the JSON "
        f"of the schema or as CSV (RFC 4180, UTF-8) with the header row {_CSV_COLUMNS[kind]} and "
        "the same values, rounded as in JSON. A CSV answer is streamed; past limit rows it "
        'stops and its Link header (rel="next") continues where it stopped.'
    )
    return described


HISTORY_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/v1/readings/meter/{meterId}": {"get": _readings("meter", "meterId", "MeterReadings")},
    "/v1/readings/vehicle/{vehicleId}": {
        "get": _readings("vehicle", "vehicleId", "VehicleReadings")
    },
    "/v1/dead-letters": {
        "get": operation(
            "Dead letters, newest first: what could not be stored, and why",
            ("200", "DeadLetterList", "A page, and those only counted past the cap"),
            params=[
                *WINDOW_PARAMS,
                query_param(
                    "deviceKind",
                    {"type": "string", "enum": list(DEVICE_KINDS)},
                    "Only dead letters of meters, or of vehicles.",
                ),
                query_param("deviceId", DEVICE_ID, "Only dead letters of this device."),
                query_param(
                    "reason",
                    {"type": "string", "minLength": 1, "maxLength": REASON_MAX},
                    "Only dead letters whose reason contains this text (any case), e.g. "
                    "'malformed JSON' or 'unknown device'.",
                ),
                *PAGE_PARAMS,
            ],
        )
    },
}
