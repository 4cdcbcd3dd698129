"""Committed readings over time during a benchmark phase, and the rates they show."""

from __future__ import annotations

import dataclasses
import time

from bench.harness import Database, proc_status_kb

STALL_S = 30.0  # a phase gives up when nothing is committed for this long


@dataclasses.dataclass(slots=True)
class Drain:
    """How committed readings grew after ``started``: [(seconds, readings), ...]."""

    started: float
    expected: int
    timeline: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    peak_rss_kb: int = 0

    @property
    def committed(self) -> int:
        return self.timeline[-1][1] if self.timeline else 0

    @property
    def total_s(self) -> float:
        """Until the last reading was committed."""
        for seconds, committed in self.timeline:
            if committed >= self.committed:
                return seconds
        return 0.0

    def rate_between(self, low: float, high: float) -> float:
        """Readings/s between the moments `low` and `high` (shares of expected) were committed."""
        lo = next((p for p in self.timeline if p[1] >= low * self.expected), None)
        hi = next((p for p in self.timeline if p[1] >= high * self.expected), None)
        if lo is None or hi is None or hi[0] <= lo[0]:
            return self.committed / self.total_s if self.total_s else 0.0
        return (hi[1] - lo[1]) / (hi[0] - lo[0])


def watch(db: Database, baseline: int, expected: int, started: float, pid: int = 0) -> Drain:
    """Poll committed readings until ``expected`` more than ``baseline`` or a stall."""
    drain = Drain(started, expected)
    last_progress = time.monotonic()
    while True:
        committed = db.committed() - baseline
        now = time.monotonic()
        if pid:
            drain.peak_rss_kb = max(drain.peak_rss_kb, proc_status_kb(pid, "VmHWM"))
        if committed > drain.committed:
            last_progress = now
        drain.timeline.append((now - started, committed))
        if committed >= expected or now - last_progress > STALL_S:
            return drain
        time.sleep(0.1)
