"""Waiting well: growing random retry delays, and sleeps that end early when asked to."""

from __future__ import annotations

import asyncio
import contextlib
import random


def backoff_delay(attempt: int, cap_s: float) -> float:
    """Growing, capped, random delay: many clients do not come back in step."""
    return random.uniform(0.5, 1.0) * min(cap_s, 0.1 * 2.0**attempt)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early if ``stop`` is set; True if it was. (Not ``wait_for``: in Python
    3.11 it can swallow a cancellation that arrives as the event is set.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


async def wait_any(seconds: float, *events: asyncio.Event) -> None:
    """Return when one of ``events`` is set, or after ``seconds``."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
