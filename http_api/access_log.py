"""The access log (ACCESS_LOG=on): one line per request on aiohttp's access logger,
``aiohttp.access``, at INFO. It names the client, the method, the path without its query
string, the status, the duration and the request id; never a header, so never a token."""

from __future__ import annotations

import logging

from aiohttp import web

from http_api.middleware import REQUEST_ID

logger = logging.getLogger("aiohttp.access")


def log_answer(request: web.Request, status: int, seconds: float) -> None:
    """An observer for middleware.timed: the request's line."""
    logger.info(
        '%s "%s %s" %d %.1f ms request id %s',
        request.remote or "-",
        request.method,
        # Still percent-encoded: a path cannot break the line, or forge another.
        request.rel_url.raw_path,
        status,
        seconds * 1000,
        request.get(REQUEST_ID, "-"),
    )
