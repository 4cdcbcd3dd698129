"""How the fleet view reads a span of time (its window, or a link segment cut inside it): from
the coarsest rollup level that fits (gateway/rollup_levels.py), and only the rest from finer
levels, down to raw history at its very edges.

Level by level, going up, each edge of the span is moved onto the next level's boundary: either
the part up to the boundary is read at this level (added), or the next level's whole row is
taken and the part outside the span is read at this level and subtracted, whichever reads less
(energy is integer mWh, so adding and subtracting is exact). What lies after now costs nothing
to read (no rows yet, but a few future-dated readings), so a window that ends now takes its
last hour and its last day whole, less what is dated after its end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeAlias

from gateway.rollup_levels import LEVELS, RollupLevel, floor_to

RAW: Final = "raw"  # the level of history rows
Edge: TypeAlias = Literal["head", "tail", "middle"]


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """The rows of one level (``level``: a rollup level's name, or RAW) that begin in
    [start, end), added (sign 1) or subtracted (sign -1). ``edge``: where it lies in its
    span (at the start, at the end, or the aligned middle read from the coarsest level)."""

    level: str
    edge: Edge
    sign: int
    start: datetime
    end: datetime

    @property
    def name(self) -> str:
        """Unique among the pieces of one span: raw_head, hourly_tail, daily_middle."""
        return f"{self.level}_{self.edge}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Aligned:
    """[lo, hi) as [start, end) on a level's boundaries plus the pieces at its edges, read at
    the level below."""

    start: datetime
    end: datetime
    edges: tuple[tuple[Edge, int, datetime, datetime], ...]  # (edge, sign, start, end)


def _align(lo: datetime, hi: datetime, unit: timedelta, rows_until: datetime) -> _Aligned:
    """[lo, hi) onto ``unit`` boundaries; nothing later than ``rows_until`` has rows yet at the
    level below (so it costs nothing to read)."""

    def cost(a: datetime, b: datetime) -> timedelta:
        return max(min(b, rows_until) - a, timedelta(0))

    cell = floor_to(lo, unit)
    if lo > cell and hi < cell + unit:  # strictly inside one unit
        if cost(lo, hi) <= cost(cell, lo) + cost(hi, cell + unit):
            return _Aligned(hi, hi, (("head", 1, lo, hi),))
        return _Aligned(cell, cell + unit, (("head", -1, cell, lo), ("tail", -1, hi, cell + unit)))
    start, end = lo, hi
    edges: list[tuple[Edge, int, datetime, datetime]] = []
    if lo > cell:
        if cost(lo, cell + unit) <= cost(cell, lo):
            start = cell + unit
            edges.append(("head", 1, lo, start))
        else:
            start = cell
            edges.append(("head", -1, cell, lo))
    last = floor_to(hi, unit)
    if hi > last:
        if cost(last, hi) <= cost(hi, last + unit):
            end = last
            edges.append(("tail", 1, last, hi))
        else:
            end = last + unit
            edges.append(("tail", -1, hi, end))
    return _Aligned(start, end, tuple(edges))


def cover(
    start: datetime, end: datetime, now: datetime, levels: Iterable[RollupLevel] = LEVELS
) -> tuple[Piece, ...]:
    """The pieces whose signed sums are [start, end)'s, read from ``levels`` (finest first)
    and raw history; empty pieces are left out. Every reading in [start, end) is counted once,
    every other one never (tests/integration/test_http_analytics.py)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        return ()
    pieces = []
    below, rows_until = RAW, now
    for level in levels:
        aligned = _align(start, end, level.unit, rows_until)
        pieces += [Piece(below, *edge) for edge in aligned.edges]
        start, end = aligned.start, aligned.end
        if end <= start:
            return tuple(pieces)
        # a level's row exists once a reading of its span does
        below, rows_until = level.name, floor_to(now, level.unit) + level.unit
    return (*pieces, Piece(below, "middle", 1, start, end))


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """Part of the window during which a vehicle was linked; ``device_id``: its meter, or the
    vehicle itself (for its DC while linked)."""

    vehicle_id: int
    device_id: int
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CutPiece:
    """A piece read for one vehicle's link segments from one device's rows."""

    vehicle_id: int
    device_id: int
    piece: Piece


@dataclasses.dataclass(frozen=True, slots=True)
class LinkedReads:
    """What is read for the link segments cut inside a window (a link begun or ended in it):
    the (vehicle, device) pairs that take their device's window sums whole, less the gaps
    between their segments, and the pieces read for single devices."""

    window_pairs: tuple[tuple[int, int], ...]
    pieces: tuple[CutPiece, ...]


def linked_reads(
    segments: Iterable[Segment], window: tuple[datetime, datetime], now: datetime
) -> LinkedReads:
    """Each (vehicle, device) pair's segments are read as they are (added), or, when that reads
    less, as the window less the gaps between them (subtracted): a vehicle moved off a charger
    and back is one gap instead of two segments, and a vehicle moved from one meter straight to
    another has no gap in its DC while linked."""
    by_pair: dict[tuple[int, int], list[Segment]] = {}
    for segment in segments:
        by_pair.setdefault((segment.vehicle_id, segment.device_id), []).append(segment)
    covers: dict[tuple[datetime, datetime], tuple[Piece, ...]] = {}  # many spans are alike

    def cost(start: datetime, end: datetime) -> timedelta:
        return max(min(end, now) - start, timedelta(0))

    window_pairs, pieces = [], []
    for (vehicle_id, device_id), linked in by_pair.items():
        linked.sort(key=lambda segment: segment.start)
        ends = [window[0], *(segment.end for segment in linked)]
        starts = [*(segment.start for segment in linked), window[1]]
        gaps = [(end, start) for end, start in zip(ends, starts, strict=True) if end < start]
        spans, sign = [(segment.start, segment.end) for segment in linked], 1
        if sum((cost(*gap) for gap in gaps), timedelta(0)) < sum(
            (cost(*span) for span in spans), timedelta(0)
        ):
            window_pairs.append((vehicle_id, device_id))
            spans, sign = gaps, -1
        for span in spans:
            if span not in covers:
                covers[span] = cover(*span, now)
            pieces += [
                CutPiece(vehicle_id, device_id, dataclasses.replace(p, sign=sign * p.sign))
                for p in covers[span]
            ]
    return LinkedReads(tuple(window_pairs), tuple(pieces))
