"""Valid tokens remembered for a while, trusted only while the database can tell us of a revoke.

The database notifies ``TOKENS_CHANNEL`` whenever a token row changes or goes (a trigger in
schema.sql). ``listen_for_token_changes`` keeps one dedicated connection listening and empties
the cache on every notification. The cache answers only while that connection listens: on any
error it is emptied and switched off (every request asks the database), and emptied again once
listening resumes, since whatever was revoked meanwhile was not heard. A notification lost on
the way (a connection that died silently) is covered by each entry's lifetime, ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

import psycopg

from gateway.waiting import backoff_delay

logger = logging.getLogger(__name__)

TOKENS_CHANNEL: Final = "fleetgate_tokens"
LISTENER_NAME: Final = "fleetgate-api-tokens"  # application_name of the listening connection
MAX_ENTRIES: Final = 10_000
_RETRY_MAX_DELAY_S: Final = 5.0

FindToken = Callable[[bytes], Awaitable[str | None]]


class TokenCache:
    """Token hash -> scope of tokens found valid (never 'unknown'), oldest evicted first."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()  # scope, expiry
        self._enabled = False
        self._clears = 0  # a lookup that began before a clear must not store what it found

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._entries)

    async def look_up(self, token_hash: bytes, find: FindToken) -> str | None:
        """The token's scope, from the cache or else from ``find`` (the database); None if
        the token is unknown or revoked."""
        cached = self.cached(token_hash)
        if cached is not None:
            return cached
        clears_before = self._clears
        scope = await find(token_hash)
        # A revoke heard while ``find`` ran cleared the cache (counted): what ``find`` read
        # may predate it, so it is not kept.
        if scope is not None and self._enabled and self._clears == clears_before:
            self._store(token_hash, scope)
        return scope

    def enable(self) -> None:
        """Listening (again): start empty, nothing heard before counts."""
        self.clear()
        self._enabled = self._ttl_s > 0

    def disable(self) -> None:
        """Not listening: forget everything and answer nothing until enabled."""
        self._enabled = False
        self.clear()

    def clear(self) -> None:
        self._entries.clear()
        self._clears += 1

    def cached(self, token_hash: bytes) -> str | None:
        """The token's scope if the cache holds it (and is on); None otherwise."""
        if not self._enabled:
            return None
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        scope, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[token_hash]
            return None
        return scope

    def _store(self, token_hash: bytes, scope: str) -> None:
        self._entries.pop(token_hash, None)  # re-stored: now the newest
        self._entries[token_hash] = (scope, self._clock() + self._ttl_s)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


async def _connect(database_url: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    # Keepalive probes on the idle connection: one that died without a word (a network gone)
    # is noticed in about 25 s and the cache switched off, not trusted until entries expire.
    return await psycopg.AsyncConnection.connect(
        database_url,
        autocommit=True,
        application_name=LISTENER_NAME,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


async def listen_for_token_changes(cache: TokenCache, database_url: str) -> None:
    """Until cancelled: keep one connection listening on ``TOKENS_CHANNEL``, emptying ``cache``
    on each notification; the cache is enabled only while it listens."""
    attempt = 0
    try:
        while True:
            try:
                async with await _connect(database_url) as conn:
                    await conn.execute(f"LISTEN {TOKENS_CHANNEL}".encode())
                    cache.enable()
                    attempt = 0
                    logger.info("token cache on: listening for token changes")
                    async for _ in conn.notifies():
                        cache.clear()
                problem = "notifications ended"
            except psycopg.Error as exc:
                problem = str(exc).strip() or type(exc).__name__
            cache.disable()
            delay = backoff_delay(attempt, _RETRY_MAX_DELAY_S)
            attempt += 1
            logger.warning(
                "token cache off, requests check the database: %s; listening again in %.2f s",
                problem,
                delay,
            )
            await asyncio.sleep(delay)
    finally:
        cache.disable()
