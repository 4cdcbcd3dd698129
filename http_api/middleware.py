"""The API's HTTP conventions at the edge: request ids; every error answered as JSON (never a
stack trace, never an HTML page); CORS for the origins allowed; query parameters checked
against those the endpoint documents."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection
from typing import Final

import psycopg
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from psycopg_pool import PoolTimeout

from http_api.bodies import Error, ErrorCode, ErrorDetail
from http_api.errors import (
    ApiError,
    DatabaseUnavailableError,
    InvalidParameterError,
    UnknownParameterError,
)
from http_api.openapi import query_parameters
from http_api.render import json

logger = logging.getLogger(__name__)

REQUEST_ID: Final = web.RequestKey("request_id", str)
REQUEST_ID_HEADER: Final = "X-Request-Id"
_CLIENT_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: no "\n" after
# Seconds a client is asked to wait before retrying when the database is unavailable.
RETRY_AFTER_S: Final = 5

# aiohttp's own refusals (unknown path, wrong method, body too large) in the API's vocabulary.
_CODES: Final[dict[int, ErrorCode]] = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    405: "methodNotAllowed",
    413: "bodyTooLarge",
    415: "unsupportedMediaType",
}


def error_response(status: int, body: Error) -> web.Response:
    return json(body, status=status)


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
        response.headers.update(exc.headers)
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
        response = error_response(exc.status, Error(ErrorDetail(code=code, message=exc.reason)))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        logger.exception(
            "unexpected error in %s %s, request id %s", request.method, request.path, request_id
        )
        response = error_response(
            500,
            Error(
                ErrorDetail(
                    code="internalError",
                    message=f"unexpected error; quote request id {request_id}",
                    request_id=request_id,
                )
            ),
        )
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def known_query_parameters(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A query parameter the endpoint does not document, or one given twice, is a 400 naming
    it: a typo (``?form=``) would otherwise be ignored and answer for the default window."""
    resource = request.match_info.route.resource
    known = _query_parameters().get((request.method, resource.canonical if resource else ""))
    if known is not None:
        for name in request.query:
            if name not in known:
                takes = ", ".join(sorted(known)) if known else "no query parameters"
                raise UnknownParameterError(
                    f"unknown query parameter {name[:80]!r}; this endpoint takes {takes}",
                    name[:80],
                )
            if len(request.query.getall(name)) > 1:
                raise InvalidParameterError(f"{name!r} is given more than once", name)
    return await handler(request)


def except_for(exempt: Callable[[web.Request], bool], middleware: Middleware) -> Middleware:
    """``middleware`` on every request but those ``exempt`` picks, which go straight on: the
    dashboard's page and files (views_page.is_page) hold no data and need no token."""

    @web.middleware
    async def skipping(request: web.Request, handler: Handler) -> web.StreamResponse:
        if exempt(request):
            return await handler(request)
        return await middleware(request, handler)

    return skipping


@functools.cache
def _query_parameters() -> dict[tuple[str, str], frozenset[str]]:
    return query_parameters()


# What a browser may send cross-origin besides the safelisted headers, and may read back.
CORS_REQUEST_HEADERS: Final = "Authorization, Content-Type, X-Request-Id"
CORS_EXPOSED_HEADERS: Final = "X-Request-Id, Retry-After, WWW-Authenticate"
# Seconds a browser may reuse a preflight's answer (Chromium caps it at 7200).
CORS_MAX_AGE_S: Final = 3600


def cors(allowed: Collection[str]) -> Middleware:
    """CORS for the ``allowed`` origins (CORS_ORIGINS; ``*`` for any): a preflight is answered
    here, before any token is asked for (a browser sends none with it), 204 and the headers
    for an allowed origin, 204 without them for any other (so the browser refuses); an actual
    response carries Access-Control-Allow-Origin only for an allowed origin."""
    any_origin = "*" in allowed
    origins = frozenset(allowed)

    def allows(origin: str | None) -> bool:
        return origin is not None and (any_origin or origin.lower() in origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        response: web.StreamResponse
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = web.Response(status=204)
            not_routed = request.match_info.http_exception
            if allows(origin) and isinstance(not_routed, web.HTTPMethodNotAllowed):
                assert origin is not None
                response.headers.update(
                    {
                        "Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Methods": ", ".join(
                            sorted(not_routed.allowed_methods)
                        ),
                        "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
                        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
                    }
                )
        else:
            response = await handler(request)
            if allows(origin):
                assert origin is not None
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        if origins:
            response.headers.add("Vary", "Origin")  # the answer depends on it: so must caches
        return response

    return middleware


# Told of each answer as the client gets it: the request, its status and how long it took.
AnswerObserver = Callable[[web.Request, int, float], None]


def timed(*observers: AnswerObserver) -> Middleware:
    """Outermost: measures every answer once, errors and refusals too, and tells each of
    ``observers`` (the metrics, the access log)."""

    @web.middleware
    async def answered(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500  # what aiohttp answers for an exception that escapes every middleware
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        else:
            status = response.status
            return response
        finally:
            seconds = time.perf_counter() - started
            for observe in observers:
                observe(request, status, seconds)

    return answered
