"""The garbage collector's settings for the API process.

A fleet request holds ~25,000 new container objects at once (a row tuple per vehicle from each
half, the AC rows by vehicle): with CPython's default first threshold (700) each request ran ~40
young collections, and every ~20 requests a full one of 14-27 ms landed on the request that
happened to trigger it (bench.api, 10,000 vehicles). Those objects die with their request, and
reference counting frees them without the collector: with a first threshold above a request's
peak, the collector runs for objects that outlive requests (and for reference cycles).
"""

from __future__ import annotations

import gc
from typing import Final

# Allocations (less deallocations) of container objects between young collections.
YOUNG_THRESHOLD: Final = 50_000


def tune_garbage_collection() -> None:
    """Raise the young threshold, and freeze what exists now (modules, the application) so
    that full collections no longer scan it. Call once the application is built."""
    _, middle, old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
