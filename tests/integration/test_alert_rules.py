"""The efficiency rules' logic: their verdicts without services, and rounds of
AlertEvaluator.evaluate on a real database (no broker, no gateway loop, no waiting)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.alert_rules import CHECKS, Scope, Verdict
from gateway.alerts import AlertEvaluator
from gateway.database import apply_schema, open_pool
from gateway.settings import Settings
from tests.http_helpers import meter_reading, vehicle_reading, write_readings
from tests.support import query

BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
MWH = 1_000_000  # a kWh
_ENERGY = next(check for check in CHECKS if check.name == "energy")


def verdicts(
    settings: Settings, ratio: float, dc_readings: int = 60, ac_readings: int = 60
) -> tuple[Verdict, Verdict]:
    """(lowEfficiency, dcExceedsAc) over a window of EFFICIENCY_WINDOW_S (1 h), linked all of
    it, with 10 kWh of AC."""
    row = ("EV-1", round(10 * MWH * ratio), 10 * MWH, dc_readings, ac_readings, 3600.0)
    low, over = _ENERGY.observe(row, settings)
    return low.verdict, over.verdict


def test_low_efficiency_is_raised_below_the_threshold_and_cleared_above_the_band() -> None:
    settings = Settings.from_env({})  # threshold 0.85, hysteresis 0.02
    assert verdicts(settings, 0.849)[0] == "raise"
    assert verdicts(settings, 0.85)[0] == "hold"  # in the band: an alert stays as it is
    assert verdicts(settings, 0.869)[0] == "hold"
    assert verdicts(settings, 0.87)[0] == "clear"
    no_band = settings.replace(efficiency_hysteresis=0.0)
    assert verdicts(no_band, 0.85)[0] == "clear"


def test_efficiency_is_judged_only_over_a_covered_window() -> None:
    settings = Settings.from_env({})  # one reading a minute expected, half of them needed
    assert verdicts(settings, 0.5, dc_readings=30) == ("raise", "clear")
    assert verdicts(settings, 0.5, dc_readings=29) == ("hold", "hold")  # vehicle readings lost
    assert verdicts(settings, 1.2, ac_readings=29) == ("hold", "hold")  # meter readings lost
    assert verdicts(settings, 1.2, ac_readings=30) == ("clear", "raise")
    anything = settings.replace(efficiency_min_coverage=0.0)
    assert verdicts(anything, 0.5, dc_readings=1, ac_readings=1) == ("raise", "clear")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    await apply_schema(database_url)
    async with open_pool(database_url, 1, "rules") as opened:
        yield opened


async def _linked(database_url: str, vehicle: str, meter: str) -> None:
    await query(
        database_url,
        """
        WITH v AS (INSERT INTO vehicle (name) VALUES (%s) RETURNING vehicle_id),
             m AS (INSERT INTO meter (name) VALUES (%s) RETURNING meter_id)
        INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from)
        SELECT vehicle_id, meter_id, %s FROM v, m RETURNING link_id""",
        vehicle,
        meter,
        BASE - timedelta(days=1),
    )


async def _history(database_url: str, vehicle: str) -> list[str]:
    """The vehicle's lowEfficiency events, in order."""
    rows = await query(
        database_url,
        "SELECT e.state FROM alert_event e JOIN alert a USING (alert_id)"
        " WHERE a.device_name = %s AND a.rule = 'lowEfficiency' ORDER BY e.event_id",
        vehicle,
    )
    return [state for (state,) in rows]


async def _charge(
    pool: AsyncConnectionPool,
    settings: Settings,
    vehicle: str,
    meter: str,
    ratios: list[float],
    *,
    first_minute: int = 1,
) -> None:
    """One reading a minute of each device, 1 kWh AC and ``ratio`` kWh DC, each judged by a
    round of its own, as the gateway's rounds would after each commit."""
    evaluator = AlertEvaluator(pool, settings)
    for minute, ratio in enumerate(ratios, start=first_minute):
        at = BASE + timedelta(minutes=minute)
        await write_readings(
            settings.database_url,
            [meter_reading(meter, at, 1.0), vehicle_reading(vehicle, at, ratio)],
        )
        await evaluator.evaluate(Scope([], [vehicle]), time_driven=False)


# A healthy charger around the threshold, as the demo's at 84-85 %.
HOVERING = [0.86, 0.84, 0.855, 0.845, 0.86, 0.849, 0.866, 0.84, 0.851, 0.869, 0.85, 0.845]


async def test_an_efficiency_hovering_at_the_threshold_raises_once_and_does_not_flap(
    pool: AsyncConnectionPool, settings: Settings, database_url: str
) -> None:
    # The window holds one reading: each round judges the minute just sent.
    settings = settings.replace(efficiency_window_s=60, efficiency_min_ac_kwh=0.5)
    await _linked(database_url, "EV-hover", "M-hover")
    await _charge(pool, settings, "EV-hover", "M-hover", HOVERING)
    assert await _history(database_url, "EV-hover") == ["raised"]
    [(value, threshold)] = await query(database_url, "SELECT value, threshold FROM alert")
    assert (value, threshold) == (pytest.approx(0.84), 0.85)  # the worst seen
    await _charge(pool, settings, "EV-hover", "M-hover", [0.87], first_minute=len(HOVERING) + 1)
    assert await _history(database_url, "EV-hover") == ["raised", "cleared"]

    # Without the band, the same charger raises and clears at every crossing.
    await _linked(database_url, "EV-flap", "M-flap")
    no_band = settings.replace(efficiency_hysteresis=0.0)
    await _charge(pool, no_band, "EV-flap", "M-flap", HOVERING)
    assert await _history(database_url, "EV-flap") == [*["raised", "cleared"] * 4, "raised"]


async def test_an_efficiency_alert_waits_for_a_covered_window(
    pool: AsyncConnectionPool, settings: Settings, database_url: str
) -> None:
    # 10 minutes: 5 readings of each device are needed.
    settings = settings.replace(efficiency_window_s=600, efficiency_min_ac_kwh=0.5)
    await _linked(database_url, "EV-new", "M-new")
    await _charge(pool, settings, "EV-new", "M-new", [0.5] * 4)
    assert await _history(database_url, "EV-new") == []  # 40 % of the window: not judged
    await _charge(pool, settings, "EV-new", "M-new", [0.5], first_minute=5)
    assert await _history(database_url, "EV-new") == ["raised"]
