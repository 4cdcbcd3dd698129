"""The daily partitions of the history tables: made ahead of time, and on demand for the days a
batch needs, through fleetgate_ensure_partition (which runs as the tables' owner)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Final

from psycopg_pool import AsyncConnectionPool

from gateway.reading_kinds import KINDS

logger = logging.getLogger(__name__)

HISTORY_TABLES: Final[dict[str, str]] = {name: kind.history for name, kind in KINDS.items()}


class Partitions:
    """Creates daily history partitions ahead of time, and on demand for the days a batch needs."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._known: set[tuple[str, date]] = set()

    async def ensure(self, days: set[tuple[str, date]]) -> None:
        missing = days - self._known
        if not missing:
            return
        async with self._pool.connection() as conn:
            for kind, day in sorted(missing):
                await conn.execute(
                    "SELECT fleetgate_ensure_partition(%s::regclass, %s)",
                    (HISTORY_TABLES[kind], day),
                )
                await conn.commit()  # one short lock per partition
                self._known.add((kind, day))
        logger.info(
            "history partitions ready: %s", ", ".join(f"{k} {d}" for k, d in sorted(missing))
        )

    async def ensure_ahead(self, days_ahead: int, now: datetime | None = None) -> None:
        today = (now or datetime.now(UTC)).date()
        await self.ensure(
            {
                (kind, today + timedelta(days=offset))
                for kind in HISTORY_TABLES
                for offset in range(-1, days_ahead + 1)
            }
        )

    def forget(self) -> None:
        """Forget what was seen: a partition may have been dropped (retention) meanwhile."""
        self._known.clear()
