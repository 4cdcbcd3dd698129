"""Building blocks of the OpenAPI document: an operation with its parameters, body and
responses, the errors every protected operation can answer."""

from __future__ import annotations

from typing import Any, Final

from http_api.openapi_schemas import TIME, ref


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return json_content(ref("Error"), description)


def with_headers(response: dict[str, Any], **headers: tuple[str, str]) -> dict[str, Any]:
    """``response`` with the headers it carries: by name, (JSON Schema type, description)."""
    described = {
        name.replace("_", "-"): {"schema": {"type": kind}, "description": text}
        for name, (kind, text) in headers.items()
    }
    return {**response, "headers": described}


DEVICE_ID: Final = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}


def path_param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A part of the path: a device id unless ``schema`` says otherwise."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema or DEVICE_ID,
        "description": description,
    }


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PAGE_PARAMS: Final = [
    query_param(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "Items per page.",
    ),
    query_param("cursor", {"type": "string"}, "nextCursor of the previous page."),
]
WINDOW_PARAMS: Final = [
    query_param("from", TIME, "Window start (RFC 3339, inclusive); default: `to` minus 24 hours."),
    query_param("to", TIME, "Window end (exclusive), clamped to now; default: now."),
]
VEHICLE: Final = path_param("vehicleId", "Vehicle id, as in its MQTT topic.")
COMMON_ERRORS: Final = {
    "401": with_headers(
        error("Missing, unknown or revoked bearer token."),
        WWW_Authenticate=(
            "string",
            'Bearer realm="fleetgate", with error="invalid_token" when a token was given.',
        ),
    ),
    "403": with_headers(
        error("The token's scope does not allow this."),
        WWW_Authenticate=("string", 'Bearer error="insufficient_scope" and the scope needed.'),
    ),
    "429": with_headers(
        error(
            "The token has TOKEN_CONCURRENCY requests in progress, or sent more than TOKEN_RATE "
            "a second (bursts of TOKEN_BURST): code tooManyRequests."
        ),
        Retry_After=("integer", "Seconds to wait before trying again."),
    ),
    "503": with_headers(
        error("The database is unreachable (code databaseUnavailable)."),
        Retry_After=("integer", "Seconds to wait before trying again."),
    ),
}


def operation(
    summary: str,
    ok: tuple[str, str, str],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    errors: dict[str, str] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    status, schema, description = ok
    responses: dict[str, Any] = {status: json_content(ref(schema), description)}
    responses["400"] = error(
        "A malformed parameter or body (invalidParameter, invalidBody), or a query parameter "
        "this operation does not take (unknownParameter); the parameter is named in the error."
    )
    for code, text in (errors or {}).items():
        responses[code] = error(text)
    described: dict[str, Any] = {"summary": summary, "parameters": params or []}
    if body:
        described["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref(body)
                    if body != "Readings"
                    else {"type": "array", "items": ref("Reading")}
                }
            },
        }
        responses.setdefault("413", error("Body over MAX_BODY_BYTES."))
    if public:
        described["security"] = []
    else:
        for code, answer in COMMON_ERRORS.items():
            responses.setdefault(code, answer)
    responses["500"] = error("Unexpected error; the body and X-Request-Id carry the request id.")
    described["responses"] = responses
    return described
