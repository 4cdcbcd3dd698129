"""Request ids, and every error answered as JSON: never a stack trace, never an HTML page."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Final

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler
from psycopg_pool import PoolTimeout

from http_api.errors import ApiError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

REQUEST_ID: Final = web.RequestKey("request_id", str)
REQUEST_ID_HEADER: Final = "X-Request-Id"
_CLIENT_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: no "\n" after
# Seconds a client is asked to wait before retrying when the database is unavailable.
RETRY_AFTER_S: Final = 5

# aiohttp's own refusals (unknown path, wrong method, body too large) in the API's vocabulary.
_CODES: Final = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    405: "methodNotAllowed",
    413: "bodyTooLarge",
    415: "unsupportedMediaType",
}


def error_response(status: int, body: dict[str, object]) -> web.Response:
    return web.json_response(body, status=status)


@web.middleware
async def request_id_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (the client's X-Request-Id if sane) that every response carries,
    and turn whatever escapes a handler into a JSON error."""
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = offered if _CLIENT_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.body())
    except (psycopg.OperationalError, PoolTimeout) as exc:
        # Not the request's fault and not a bug: the database is down or restarting. A short
        # line, not a trace; the client is told to come back.
        logger.warning(
            "database unavailable in %s %s, request id %s: %s",
            request.method,
            request.path,
            request_id,
            str(exc).strip() or type(exc).__name__,
        )
        unavailable = DatabaseUnavailableError("the database is not reachable; try again shortly")
        response = error_response(unavailable.status, unavailable.body())
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "httpError")
        response = error_response(exc.status, {"error": {"code": code, "message": exc.reason}})
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        logger.exception(
            "unexpected error in %s %s, request id %s", request.method, request.path, request_id
        )
        response = error_response(
            500,
            {
                "error": {
                    "code": "internalError",
                    "message": f"unexpected error; quote request id {request_id}",
                    "requestId": request_id,
                }
            },
        )
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
