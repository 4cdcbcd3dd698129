"""The API's background loops (the broker publisher, the token-change listener) as named tasks,
watched: one that ends while the API serves, by an error or a cancel that was not the shutdown,
stops the process with a non-zero status instead of leaving it alive but idle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class BackgroundTasks:
    """Each loop restarts its own work when it can (the publisher reconnects); what ends one
    anyway is unforeseen, and only a restart of the process is sure to heal it."""

    def __init__(self) -> None:
        self._stopping: set[asyncio.Task[None]] = set()
        self.failed = asyncio.Event()
        self.failure = ""

    def start(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._ended)
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Cancel ``task`` on shutdown and wait until it has ended."""
        self._stopping.add(task)
        task.cancel()
        await asyncio.wait((task,))  # unlike awaiting the task, never swallows our own cancel

    def _ended(self, task: asyncio.Task[None]) -> None:
        on_shutdown = task in self._stopping
        self._stopping.discard(task)
        if task.cancelled():
            how = "was cancelled"
        elif (exc := task.exception()) is not None:
            logger.error("background task %r failed", task.get_name(), exc_info=exc)
            how = f"failed ({type(exc).__name__}: {exc})"
        else:
            how = "returned"
        if on_shutdown:
            return
        self.failure = f"background task {task.get_name()!r} {how}"
        logger.error("%s while the API serves; stopping with a non-zero status", self.failure)
        self.failed.set()
