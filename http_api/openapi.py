"""The OpenAPI 3.1 document of the API, as served (a test checks it against the routes)."""

from __future__ import annotations

from typing import Any


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fleetgate HTTP API", "version": "1"},
        "paths": {},
    }
