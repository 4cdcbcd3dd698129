"""The fleet dashboard: a static page at ``/`` and its files under ``/static/``, shipped in the
package and served with a strict Content-Security-Policy. The page holds no data, so it needs no
token; in the browser it reads the public API with the token its user gives (docs/dashboard.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from aiohttp import web

STATIC_DIR: Final = Path(__file__).parent / "static"
_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# Only the page's own files, from its own origin: no inline script or style (so injected markup
# cannot run), no plugins, no <base> rewriting, never framed (clickjacking).
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (a 304 while unchanged), so an upgraded API serves its own page.
    "Cache-Control": "no-cache",
}
# The routes of the page (path templates), which the token check lets through.
PAGE_ROUTES: Final = frozenset({"/", "/static/{name}"})


class _File:
    """A file of the page, read once: its bytes, type and ETag."""

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.content_type = _TYPES[path.suffix]
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


# By name: only these are served, so no request can name anything else on the disk.
_FILES: Final = {
    path.name: _File(path) for path in sorted(STATIC_DIR.iterdir()) if path.suffix in _TYPES
}


def is_page(request: web.Request) -> bool:
    """The request is a GET that the router gave to the page (never decided on the path alone,
    which a crafted one could make look like /static/ while it routes elsewhere)."""
    resource = request.match_info.route.resource
    return (
        request.method == "GET"
        and resource is not None
        and resource.canonical in PAGE_ROUTES
        and request.match_info.http_exception is None
    )


def _serve(request: web.Request, name: str) -> web.Response:
    found = _FILES.get(name)
    if found is None:
        raise web.HTTPNotFound(reason=f"no file {name[:80]!r} in the dashboard")
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={**PAGE_HEADERS, "ETag": found.etag})
    return web.Response(
        body=found.body,
        content_type=found.content_type,
        charset="utf-8",
        headers={**PAGE_HEADERS, "ETag": found.etag},
    )


async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def static_file(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["name"])
