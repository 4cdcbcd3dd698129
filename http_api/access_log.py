"""The access log (ACCESS_LOG=on): one line per request on aiohttp's access logger,
``aiohttp.access``, at INFO. It names the client, the method, the path without its query
string, the status, the duration and the request id; never a header, so never a token."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from http_api.middleware import REQUEST_ID

logger = logging.getLogger("aiohttp.access")


@web.middleware
async def log_access(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        logger.info(
            '%s "%s %s" %d %.1f ms request id %s',
            request.remote or "-",
            request.method,
            # Still percent-encoded: a path cannot break the line, or forge another.
            request.rel_url.raw_path,
            status,
            (time.perf_counter() - started) * 1000,
            request.get(REQUEST_ID, "-"),
        )
