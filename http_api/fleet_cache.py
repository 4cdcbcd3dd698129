"""The default fleet view (GET /v1/analytics/fleet without parameters) of each period
(FLEET_CACHE_S, a UTC minute by default), computed once: by the first request of the period,
while every other request of it awaits that same computation (single flight), and then served
to all until the period ends. A thousand dashboards polling it cost one computation a minute."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class CachedView:
    """One period's answer: its encoded body, when it was computed and until when it is served
    (wall-clock seconds)."""

    body: bytes
    computed_at: float
    expires_at: float

    def headers(self, now: float) -> dict[str, str]:
        """Age (seconds since computed) and max-age (its lifetime): a client's cache keeps it
        max-age minus Age more seconds, until the period ends (RFC 9111)."""
        return {
            "Age": str(max(0, int(now - self.computed_at))),
            "Cache-Control": f"max-age={max(0, int(self.expires_at - self.computed_at))}",
        }


class FleetViewCache:
    """``period_s`` 0 never caches. ``computations`` counts the views computed."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.time) -> None:
        self.period_s = period_s
        self.computations = 0
        self._clock = clock
        self._period: int | None = None
        self._task: asyncio.Task[CachedView] | None = None

    async def get(self, compute: Callable[[], Awaitable[bytes]]) -> CachedView:
        """This period's view; computed with ``compute`` (the encoded answer) if it is the
        first to ask, or if the period's computation failed (the error went to those that
        awaited it: nothing failed is kept)."""
        now = self._clock()
        period = int(now // self.period_s)
        task = self._task
        if period != self._period or task is None or _failed(task):
            self._period = period
            expires_at = (period + 1) * self.period_s
            task = self._task = asyncio.create_task(
                self._compute(compute, expires_at), name=f"fleet-view-{period}"
            )
            task.add_done_callback(_log_failure)
        # Shielded: a dashboard that hangs up does not cancel the others' computation.
        return await asyncio.shield(task)

    def headers(self, view: CachedView) -> dict[str, str]:
        return view.headers(self._clock())

    async def _compute(self, compute: Callable[[], Awaitable[bytes]], expires: float) -> CachedView:
        self.computations += 1
        computed_at = self._clock()
        return CachedView(await compute(), computed_at, expires)

    async def close(self) -> None:
        """Cancel a computation in progress (on shutdown) and wait until it has ended."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait((self._task,))


def _failed(task: asyncio.Task[CachedView]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _log_failure(task: asyncio.Task[CachedView]) -> None:
    # Retrieved here too: a failure none awaited (all hung up) is still logged, once.
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("computing %s failed: %s", task.get_name(), exc)


FLEET_CACHE: Final = web.AppKey("fleet_cache", FleetViewCache)


@contextlib.asynccontextmanager
async def fleet_view_cache(period_s: float) -> AsyncIterator[FleetViewCache]:
    cache = FleetViewCache(period_s)
    try:
        yield cache
    finally:
        await cache.close()
