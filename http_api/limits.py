"""Fair under load: per bearer token, at most TOKEN_CONCURRENCY requests at once and a request
rate of TOKEN_RATE a second (a token bucket holding TOKEN_BURST); past either, a 429 with
Retry-After at once, so that one greedy client cannot queue everyone else behind it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from http_api.auth import TOKEN_HASH
from http_api.errors import TooManyRequestsError

# Buckets kept at most; past it, those full and idle (as a new one would be) are dropped.
MAX_BUCKETS: Final = 10_000


class _Bucket:
    __slots__ = ("in_flight", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.in_flight = 0


class TokenLimits:
    """The state of every token's limits. ``concurrency`` or ``rate`` 0: that limit is off."""

    def __init__(
        self,
        concurrency: int,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency, self.rate, self.burst = concurrency, rate, max(burst, 1)
        self._clock = clock
        self._buckets: dict[bytes, _Bucket] = {}

    def admit(self, key: bytes) -> None:
        """Count a request of token ``key`` in, or raise TooManyRequestsError saying when to
        come back. Every admitted request is released (``release``) when it ends."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        if self.concurrency and bucket.in_flight >= self.concurrency:
            raise TooManyRequestsError(
                f"this token has {bucket.in_flight} requests in progress, the most it may have "
                "(TOKEN_CONCURRENCY); wait for one to finish",
                retry_after_s=1,
            )
        if self.rate:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1:
                wait_s = math.ceil((1 - bucket.tokens) / self.rate)
                raise TooManyRequestsError(
                    f"this token sent more than {self.rate:g} requests a second (TOKEN_RATE, "
                    f"bursts of {self.burst}); retry in {wait_s} s",
                    retry_after_s=wait_s,
                )
            bucket.tokens -= 1
        bucket.in_flight += 1

    def release(self, key: bytes) -> None:
        self._buckets[key].in_flight -= 1

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_idle(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            refilled = bucket.tokens + (now - bucket.updated) * self.rate
            if bucket.in_flight == 0 and (not self.rate or refilled >= self.burst):
                del self._buckets[key]


def limit_per_token(limits: TokenLimits) -> Middleware:
    """The middleware of ``limits``, after the token check: requests without a token (health)
    are not limited."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.get(TOKEN_HASH)
        if key is None or not (limits.concurrency or limits.rate):
            return await handler(request)
        limits.admit(key)
        try:
            return await handler(request)
        finally:
            limits.release(key)

    return middleware
