"""Rollups rebuilt from history for a range of time: every row of each rollup level
(gateway/rollup_levels.py) that the range touches, deleted and computed again from the history
rows, in one transaction. The operator's repair (``python -m gateway rebuild-rollups``) and the
API benchmark's generator; the gateway keeps rollups batch by batch
(gateway/write_statements.py), from the same declarations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import psycopg

from gateway.reading_kinds import KINDS, ReadingKind
from gateway.readings import DeviceKind
from gateway.rollup_levels import DAILY, HOURLY, LEVELS, RollupLevel, ceil_to, floor_to
from gateway.write_statements import ORIGIN, names, sums_of_history

# A level's rows over its span, from history: a row is always its history's, whatever the rows
# of other levels hold. Rows are stored in time order, as the gateway writes them over time: a
# span's history lies on neighbouring pages.
_REBUILD: Final = """
INSERT INTO {table} ({columns})
SELECT {device}, date_bin({interval}, ts, {origin}), {sums}
FROM {history} WHERE ts >= %(from)s AND ts < %(to)s
GROUP BY 1, 2 ORDER BY 2, 1
"""
_DELETE: Final = "DELETE FROM {table} WHERE {key} >= %(from)s AND {key} < %(to)s"
# A gateway's write of the same kind waits until the commit (it would add a batch to rows being
# rebuilt); readers do not. Two rebuilds take turns. Meters first, as the gateway writes.
_LOCK: Final = "LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE"


def _statements(kind: ReadingKind[Any], level: RollupLevel) -> tuple[bytes, bytes]:
    """Deleting and rebuilding ``level``'s rows of ``kind`` over a span (%(from)s, %(to)s)."""
    table = level.table(kind)
    rebuild = _REBUILD.format(
        table=table,
        columns=names(level.columns(kind)),
        device=kind.device_id,
        interval=level.interval,
        origin=ORIGIN,
        sums=sums_of_history(kind, level),
        history=kind.history,
    )
    return _DELETE.format(table=table, key=level.key).encode(), rebuild.encode()


_STATEMENTS: Final = {
    name: [(level, *_statements(kind, level)) for level in LEVELS] for name, kind in KINDS.items()
}


class RollupRightsError(psycopg.errors.InsufficientPrivilege):
    """This login may not rewrite rollups (a service's role): the schema's owner rebuilds them."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild wrote for one kind: per level (by name), the span it covered (whole
    units of the level) and the rows it wrote."""

    kind: DeviceKind
    spans: dict[str, tuple[datetime, datetime]]
    rows: dict[str, int]

    @property
    def hours_from(self) -> datetime:
        return self.spans[HOURLY.name][0]

    @property
    def hours_to(self) -> datetime:
        return self.spans[HOURLY.name][1]

    @property
    def days_from(self) -> datetime:
        return self.spans[DAILY.name][0]

    @property
    def days_to(self) -> datetime:
        return self.spans[DAILY.name][1]

    @property
    def hourly_rows(self) -> int:
        return self.rows[HOURLY.name]

    @property
    def daily_rows(self) -> int:
        return self.rows[DAILY.name]


async def rebuild_rollups(
    conn: psycopg.AsyncConnection[Any],
    start: datetime,
    end: datetime,
    kinds: Sequence[DeviceKind] = tuple(KINDS),
) -> list[Rebuilt]:
    """Delete and recompute, from history, the rollups of every device for the rows of each
    level that [``start``, ``end``) touches (an hour or a day from all its history, also where
    the range begins or ends within it); rollups outside those are not touched. One
    transaction (a savepoint if ``conn`` is in one); rebuilding again changes nothing. A gateway
    writing the same kinds waits for it. It deletes rows, which only the schema's owner may:
    another login gets ``RollupRightsError``."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("the range needs times with a time zone")
    if end <= start:
        raise ValueError(f"the range is empty: {start.isoformat()} is not before {end.isoformat()}")
    spans = {
        level.name: (floor_to(start, level.unit), ceil_to(end, level.unit)) for level in LEVELS
    }
    ordered = [name for name in KINDS if name in kinds]
    tables = ", ".join(level.table(KINDS[name]) for name in ordered for level in LEVELS)
    rebuilt = []
    try:
        async with conn.transaction():
            await conn.execute(_LOCK.format(tables=tables).encode())
            for name in ordered:
                rows = {}
                cur = conn.cursor()
                for level, delete, rebuild in _STATEMENTS[name]:
                    span = dict(zip(("from", "to"), spans[level.name], strict=True))
                    await cur.execute(delete, span)
                    await cur.execute(rebuild, span)
                    rows[level.name] = cur.rowcount
                rebuilt.append(Rebuilt(name, spans, rows))
    except psycopg.errors.InsufficientPrivilege as exc:
        reason = exc.diag.message_primary or " ".join(str(exc).split())
        raise RollupRightsError(
            f"{conn.info.user!r} may not rebuild rollups ({reason}): run it with the"
            " DATABASE_URL of the schema's owner (a member of fleetgate_owner) or of a superuser"
            " (docs/security.md)"
        ) from exc
    return rebuilt
