"""Charging efficiency figures: pure logic over the sums the rollup queries return."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from http_api.bodies import EfficiencyStatus, ReadingCounts, ReadingCoverage, Window
from http_api.render import kwh, ratio, tenth, utc
from http_api.settings import Settings


@dataclasses.dataclass(slots=True)
class Figures:
    """Sums over one span (a window, an hour, one vehicle's window): energies in exact mWh."""

    ac_mwh: int = 0
    ac_readings: int = 0
    dc_mwh: int = 0
    dc_readings: int = 0
    dc_linked_mwh: int = 0
    dc_linked_readings: int = 0
    temp_sum: float | None = None
    temp_min: float | None = None
    temp_max: float | None = None
    seconds: float = 0.0  # length of the span
    linked_seconds: float = 0.0  # of which a meter was linked

    def add_ac(self, row: dict[str, Any]) -> None:
        self.ac_mwh += int(row["energy"])
        self.ac_readings += int(row["readings"])

    def add_dc_linked(self, row: dict[str, Any]) -> None:
        self.dc_linked_mwh += int(row["energy"])
        self.dc_linked_readings += int(row["readings"])

    def set_dc(self, row: dict[str, Any]) -> None:
        self.dc_mwh = int(row["energy"])
        self.dc_readings = int(row["readings"])
        self.temp_sum = row["temp_sum"]
        self.temp_min = row["temp_min"]
        self.temp_max = row["temp_max"]

    def efficiency(self) -> float | None:
        """DC into the battery over AC billed by its meter, both over the linked time only: DC
        taken while no meter was linked has no AC to compare with. None rather than invented
        when either side is missing."""
        if self.ac_mwh <= 0 or self.dc_linked_readings == 0:
            return None
        return self.dc_linked_mwh / self.ac_mwh


def status_of(efficiency: float | None, settings: Settings) -> EfficiencyStatus:
    if efficiency is None:
        return "noData"
    if efficiency > 1.0:
        return "suspect"  # DC cannot exceed AC: a meter or a link is wrong
    if efficiency >= settings.efficiency_excellent:
        return "excellent"
    if efficiency >= settings.efficiency_good:
        return "good"
    if efficiency >= settings.efficiency_warning:
        return "warning"
    return "critical"


def _coverage(readings: int, seconds: float, interval_s: float) -> float | None:
    expected = seconds / interval_s
    if expected <= 0:
        return None
    return ratio(min(1.0, readings / expected))


def figure_fields(figures: Figures, settings: Settings) -> dict[str, Any]:
    """The fields of an answer's bodies.Figures (a Performance, a TrendHour, a FleetVehicle),
    by name, rounded."""
    efficiency = figures.efficiency()
    average = (
        figures.temp_sum / figures.dc_readings
        if figures.temp_sum is not None and figures.dc_readings
        else None
    )
    return {
        "total_ac": kwh(figures.ac_mwh),
        "total_dc": kwh(figures.dc_mwh),
        "dc_while_linked": kwh(figures.dc_linked_mwh),
        "efficiency": ratio(efficiency),
        "efficiency_status": status_of(efficiency, settings),
        "avg_battery_temp": tenth(average),
        "min_battery_temp": tenth(figures.temp_min),
        "max_battery_temp": tenth(figures.temp_max),
        "readings": ReadingCounts(ac=figures.ac_readings, dc=figures.dc_readings),
        "coverage": ReadingCoverage(
            ac=_coverage(figures.ac_readings, figures.linked_seconds, settings.reading_interval_s),
            dc=_coverage(figures.dc_readings, figures.seconds, settings.reading_interval_s),
        ),
    }


def window_body(start: datetime, end: datetime) -> Window:
    return Window(from_=utc(start), to=utc(end))


def overlap_seconds(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> float:
    longest = min(a[1], b[1]) - max(a[0], b[0])
    return max(longest, timedelta(0)).total_seconds()


def hours_of(start: datetime, end: datetime) -> list[datetime]:
    """UTC hour starts of every hour the window touches."""
    hour = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours
