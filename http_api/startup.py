"""Starting in any order: the API waits for its database (down, or not created yet) as the
gateway does, and serves until told to stop or until a background task fails."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import psycopg

from gateway.database import apply_schema
from gateway.schema import SchemaRightsError
from gateway.waiting import backoff_delay, sleep_unless

logger = logging.getLogger(__name__)

_RETRY_MAX_DELAY_S: Final = 5.0


def one_line(exc: BaseException) -> str:
    """libpq's messages run over several lines (a hint after a tab); a log line or a CLI error
    is one."""
    return " ".join(str(exc).split()) or type(exc).__name__


async def wait_for_database(database_url: str, stop: asyncio.Event) -> bool:
    """Apply the schema, retrying with growing delays while the database is unreachable or does
    not exist yet, or needs a migration that the API's role may not make (its owner's to run);
    True once applied, False if ``stop`` was set first."""
    attempt = 0
    while not stop.is_set():
        applying = asyncio.ensure_future(apply_schema(database_url))
        await first_done(applying, stop)
        if not applying.done():  # stopping while a connection attempt hangs
            applying.cancel()
            await asyncio.wait((applying,))
            return False
        try:
            applying.result()
        except psycopg.OperationalError as exc:
            delay = backoff_delay(attempt, _RETRY_MAX_DELAY_S)
            logger.warning(
                "waiting for the database: %s; trying again in %.2f s", one_line(exc), delay
            )
        except SchemaRightsError as exc:
            delay = backoff_delay(attempt, _RETRY_MAX_DELAY_S)
            logger.error(  # noqa: TRY400 - the message says it all
                "waiting for a migration: %s; trying again in %.2f s", exc, delay
            )
        else:
            if attempt:
                logger.info("the database is reachable; schema applied")
            return True
        await sleep_unless(stop, delay)
        attempt += 1
    return False


async def first_done(*awaited: asyncio.Event | asyncio.Future[Any]) -> None:
    """Return when one of ``awaited`` is set (an event) or done (a task); cancels nothing of
    them, and (unlike ``asyncio.wait_for``) never swallows a cancellation of the caller."""
    waiters = [
        asyncio.ensure_future(item.wait()) for item in awaited if isinstance(item, asyncio.Event)
    ]
    futures: list[asyncio.Future[Any]] = [
        item for item in awaited if not isinstance(item, asyncio.Event)
    ]
    try:
        await asyncio.wait([*waiters, *futures], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
