"""Bearer tokens: how they are made and hashed, and the middleware that checks them."""

from __future__ import annotations

import functools
import hashlib
import secrets
from typing import Final, Literal, TypeAlias

from aiohttp import web
from aiohttp.typedefs import Handler

from http_api import queries
from http_api.errors import ForbiddenError, UnauthorizedError
from http_api.keys import POOL, TOKEN_CACHE

Scope: TypeAlias = Literal["read", "write", "admin"]
# Each scope grants those before it: admin also writes, write also reads.
SCOPES: Final[tuple[Scope, ...]] = ("read", "write", "admin")
_RANK: Final = {scope: rank for rank, scope in enumerate(SCOPES)}
TOKEN_PREFIX: Final = "fgt_"
# Health answers orchestrators and load balancers, which carry no token (GET /metrics takes one).
PUBLIC_PATHS: Final = frozenset({"/health", "/health/live", "/health/ready"})
TOKEN_HASH: Final = web.RequestKey("token_hash", bytes)
# The device registry (credentials included), read or changed, is for 'admin' tokens only.
ADMIN_ROUTES: Final = "/v1/devices"
_WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def new_token() -> str:
    """A random 32-byte token; shown once, only its hash is stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def required_scope(method: str, route: str | None) -> Scope:
    """What a request needs: the device registry takes 'admin'; changing anything else takes
    'write'; reading takes 'read'. ``route``: the matched route's path template, if any."""
    if route is not None and (route == ADMIN_ROUTES or route.startswith(ADMIN_ROUTES + "/")):
        return "admin"
    return "write" if method in _WRITE_METHODS else "read"


def allows(granted: str, needed: Scope) -> bool:
    return granted in _RANK and _RANK[granted] >= _RANK[needed]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Secure by default: every path but PUBLIC_PATHS needs a valid token of enough scope.
    Tokens are checked in the database, or in its cache while that hears every revoke. A known
    token then learns that a path does not exist (404) or does not take the method (405, with
    Allow) before it is told its scope falls short: a read token's POST to a GET route is a
    405, not a 403 that would send it looking for a write token."""
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError(
            "an Authorization: Bearer <token> header is required", token_given=False
        )
    token_hash = hash_token(token.strip())
    granted = await request.app[TOKEN_CACHE].look_up(
        token_hash, functools.partial(queries.find_token, request.app[POOL])
    )
    if granted is None:
        raise UnauthorizedError("unknown or revoked token", token_given=True)
    request[TOKEN_HASH] = token_hash  # whose limits the request counts against
    not_routed = request.match_info.http_exception
    if not_routed is not None:
        raise not_routed
    resource = request.match_info.route.resource
    needed = required_scope(request.method, resource.canonical if resource else None)
    if not allows(granted, needed):
        raise ForbiddenError(
            f"this endpoint needs a token of scope {needed!r}, not {granted!r}", needed=needed
        )
    return await handler(request)
