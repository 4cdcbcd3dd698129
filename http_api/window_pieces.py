"""How the fleet view reads a window: from the coarsest rollups that fit, and only the rest from
finer ones, down to raw history for the minutes at its very edges.

Raw readings are read for the minutes at each edge up to a 10-minute boundary: either the
window's part of that 10 minutes is added, or the whole 10 minutes is taken from the coarser
level and the part outside the window subtracted, whichever reads fewer readings (energy is
integer mWh, so adding and subtracting is exact). The rest lies on 10-minute boundaries: its
part of the edge hours is read from the 10-minute slot columns of one hourly row at each edge,
its part of the edge days from the hour columns of one daily row at each edge, and the days in
between from the daily rows whole. For a 24-hour window that is per device at most ~5 minutes
of readings, one hourly row and one daily row at each edge; for a window that ends now, one
daily row at the end.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, Final

SLOT: Final = timedelta(minutes=10)
HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
ORIGIN: Final = datetime(2000, 1, 1, tzinfo=UTC)  # as the gateway's date_bin
# A window's end this close to now counts as now: the readings since cost less than a row.
NOW_SLACK: Final = timedelta(seconds=30)


def floor_to(moment: datetime, unit: timedelta) -> datetime:
    return ORIGIN + (moment - ORIGIN) // unit * unit


def ceil_to(moment: datetime, unit: timedelta) -> datetime:
    floor = floor_to(moment, unit)
    return floor if floor == moment else floor + unit


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """[lo, hi) of one level, added (sign 1) or subtracted (sign -1)."""

    sign: int
    lo: datetime
    hi: datetime

    def params(self, name: str) -> dict[str, Any]:
        return {f"{name}sign": self.sign, f"{name}lo": self.lo, f"{name}hi": self.hi}

    def part_params(self, name: str, whole: timedelta, part: timedelta) -> dict[str, Any]:
        """A piece of parts (10-minute slots, hours) inside one whole (hour, day):
        that whole's rollup row {name}cell and its parts klo <= K < khi."""
        cell = floor_to(self.lo, whole)
        klo = (self.lo - cell) // part
        return self.params(name) | {
            f"{name}cell": cell,
            f"{name}klo": klo,
            f"{name}khi": klo + (self.hi - self.lo) // part,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    """[lo, hi) = [aligned_lo, aligned_hi) + head + tail. ``inside``: lo and hi lay strictly
    inside one cell, so head and tail are not the parts at lo and at hi."""

    aligned_lo: datetime
    aligned_hi: datetime
    head: Piece
    tail: Piece
    inside: bool


def split(lo: datetime, hi: datetime, unit: timedelta, rows_until: datetime) -> Split:
    """Split [lo, hi) onto ``unit`` boundaries; ``rows_until``: nothing later than this has
    rows yet (the future costs nothing to read)."""

    def cost(a: datetime, b: datetime) -> timedelta:
        return max(min(b, rows_until) - a, timedelta(0))

    if hi <= lo:
        return Split(lo, lo, Piece(1, lo, lo), Piece(1, lo, lo), inside=False)
    cell = floor_to(lo, unit)
    if lo > cell and hi < cell + unit:
        if cost(lo, hi) <= cost(cell, lo) + cost(hi, cell + unit):
            return Split(cell, cell, Piece(1, lo, hi), Piece(1, hi, hi), inside=True)
        return Split(cell, cell + unit, Piece(-1, cell, lo), Piece(-1, hi, cell + unit), True)
    aligned_lo, head = lo, Piece(1, lo, lo)
    if lo > cell:
        if cost(lo, cell + unit) <= cost(cell, lo):
            aligned_lo, head = cell + unit, Piece(1, lo, cell + unit)
        else:
            aligned_lo, head = cell, Piece(-1, cell, lo)
    aligned_hi, tail = hi, Piece(1, hi, hi)
    last = floor_to(hi, unit)
    if hi > last:
        if cost(last, hi) <= cost(hi, last + unit):
            aligned_hi, tail = last, Piece(1, last, hi)
        else:
            aligned_hi, tail = last + unit, Piece(-1, hi, last + unit)
    return Split(aligned_lo, aligned_hi, head, tail, inside=False)


def parts(lo: datetime, hi: datetime, whole: timedelta) -> Split:
    """Split [lo, hi) (on the boundaries of the parts kept in a ``whole``'s rollup row) onto
    ``whole`` boundaries: the edge pieces are always added, as a piece of one row costs that
    row whichever parts it sums."""
    if hi <= lo:
        return Split(lo, lo, Piece(1, lo, lo), Piece(1, lo, lo), inside=False)
    after = ceil_to(lo, whole)
    if hi <= after:  # inside one whole: one piece, and nothing aligned
        return Split(hi, hi, Piece(1, lo, hi), Piece(1, hi, hi), inside=False)
    last = floor_to(hi, whole)
    return Split(after, last, Piece(1, lo, after), Piece(1, last, hi), inside=False)


def window_pieces(start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    """The parameters of the fleet's window sums: raw pieces p1/p2, 10-minute pieces q1/q2 (of
    one hourly row each), hour pieces u1/u2 (of one daily row each), whole days [d_lo, d_hi);
    [r1, r2) is what lies on whole hours (r2 may lie past the end, when the tail p2 is
    subtracted), and [hf, hc) the whole hours around the window (which bound every raw read).

    A window that ends now (the default) ends on its day's boundary instead, less the raw
    readings after its end: there are none yet but future-dated ones, and the day's daily row,
    taken whole, replaces the end's hourly row and the day's hour columns (one row a device
    fewer)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    raw = split(start, end, SLOT, now)
    day_end = ceil_to(end, DAY)
    ends_now = min(day_end, now) - end <= NOW_SLACK
    if ends_now and start < end < day_end and not raw.inside:
        raw = dataclasses.replace(raw, aligned_hi=day_end, tail=Piece(-1, end, day_end))
    slots = parts(raw.aligned_lo, raw.aligned_hi, HOUR)
    hours = parts(slots.aligned_lo, slots.aligned_hi, DAY)
    return {
        "hf": floor_to(start, HOUR),
        "hc": max(ceil_to(end, HOUR), raw.aligned_hi),
        "r1": slots.aligned_lo,
        "r2": slots.aligned_hi,
        "r2_rows": min(slots.aligned_hi, now),
        "d_lo": hours.aligned_lo,
        "d_hi": hours.aligned_hi,
        # [start, r1) is exactly p1 + q1 and [r2, end) is q2 + p2, unless the raw level split
        # inside one 10 minutes: then link segments cut inside the window cannot share them.
        "share_edges": not raw.inside,
    } | (
        raw.head.params("p1")
        | raw.tail.params("p2")
        | slots.head.part_params("q1", HOUR, SLOT)
        | slots.tail.part_params("q2", HOUR, SLOT)
        | hours.head.part_params("u1", DAY, HOUR)
        | hours.tail.part_params("u2", DAY, HOUR)
    )


def split_sql(lo: str, hi: str, unit: str, rows_until: str, name: str) -> str:
    """split() in SQL, for spans known only in the database (link segments): a LATERAL
    subquery over the expressions ``lo`` and ``hi`` (``unit`` an interval literal) giving
    {name}.alo and {name}.ahi (the aligned span) and the pieces {name}.p1sign, p1lo, p1hi,
    p2sign, p2lo, p2hi, chosen as split() chooses them."""
    cost = "greatest(least({b}, a.ru) - {a}, interval '0')"
    inside_direct = (
        f"{cost.format(a='a.lo', b='a.hi')} <= {cost.format(a='a.cell', b='a.lo')}"
        f" + {cost.format(a='a.hi', b='a.cell + u.u')}"
    )
    head_direct = (
        f"{cost.format(a='a.lo', b='a.cell + u.u')} <= {cost.format(a='a.cell', b='a.lo')}"
    )
    tail_direct = (
        f"{cost.format(a='a.last', b='a.hi')} <= {cost.format(a='a.hi', b='a.last + u.u')}"
    )
    return f"""LATERAL (
    SELECT CASE k.mode WHEN 'empty' THEN a.lo WHEN 'direct' THEN a.cell
                WHEN 'complement' THEN a.cell
                ELSE CASE WHEN NOT k.head_cut THEN a.lo WHEN k.head_direct THEN a.cell + u.u
                          ELSE a.cell END END AS alo,
           CASE k.mode WHEN 'empty' THEN a.lo WHEN 'direct' THEN a.cell
                WHEN 'complement' THEN a.cell + u.u
                ELSE CASE WHEN NOT k.tail_cut THEN a.hi WHEN k.tail_direct THEN a.last
                          ELSE a.last + u.u END END AS ahi,
           CASE WHEN k.mode = 'complement' OR k.mode = 'edges' AND k.head_cut AND NOT k.head_direct
                THEN -1 ELSE 1 END AS p1sign,
           CASE k.mode WHEN 'complement' THEN a.cell
                WHEN 'edges' THEN CASE WHEN k.head_cut AND NOT k.head_direct THEN a.cell
                                       ELSE a.lo END
                ELSE a.lo END AS p1lo,
           CASE k.mode WHEN 'direct' THEN a.hi WHEN 'complement' THEN a.lo
                WHEN 'edges' THEN CASE WHEN k.head_cut AND k.head_direct THEN a.cell + u.u
                                       ELSE a.lo END
                ELSE a.lo END AS p1hi,
           CASE WHEN k.mode = 'complement' OR k.mode = 'edges' AND k.tail_cut AND NOT k.tail_direct
                THEN -1 ELSE 1 END AS p2sign,
           CASE k.mode WHEN 'empty' THEN a.lo
                WHEN 'edges' THEN CASE WHEN k.tail_cut AND k.tail_direct THEN a.last ELSE a.hi END
                ELSE a.hi END AS p2lo,
           CASE k.mode WHEN 'empty' THEN a.lo WHEN 'direct' THEN a.hi
                WHEN 'complement' THEN a.cell + u.u
                ELSE CASE WHEN k.tail_cut AND NOT k.tail_direct THEN a.last + u.u
                          ELSE a.hi END END AS p2hi
    FROM (SELECT {unit} AS u) u,
    LATERAL (
        SELECT {lo} AS lo, {hi} AS hi, {rows_until} AS ru,
               date_bin(u.u, {lo}, {_ORIGIN_SQL}) AS cell,
               date_bin(u.u, {hi}, {_ORIGIN_SQL}) AS last
        OFFSET 0
    ) a,
    LATERAL (
        SELECT CASE WHEN a.hi <= a.lo THEN 'empty'
                    WHEN a.lo > a.cell AND a.hi < a.cell + u.u
                    THEN CASE WHEN {inside_direct} THEN 'direct' ELSE 'complement' END
                    ELSE 'edges' END AS mode,
               a.lo > a.cell AS head_cut, {head_direct} AS head_direct,
               a.hi > a.last AS tail_cut, {tail_direct} AS tail_direct
        OFFSET 0
    ) k
    -- OFFSET 0: computed once per row, not pulled up and inlined into every use (which took
    -- the planner ~0.5 s and repeated each expression many times per row)
    OFFSET 0
) {name}"""


_ORIGIN_SQL: Final = "timestamptz '2000-01-01 00:00:00+00'"
