"""The alert rules: what each one looks at, and when it says raise, clear or hold.

Every rule judges the database as it is (live rows, history, links, dead letters), never state
kept in memory, so a restarted gateway judges exactly as before. Each check returns one
observation per device in scope; the verdict `hold` (inside a hysteresis band, or not enough
data to judge) leaves an alert as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

from gateway.settings import Settings

Verdict: TypeAlias = Literal["raise", "clear", "hold"]
RULES: Final = (
    "lowEfficiency",
    "batteryOverTemp",
    "voltageOutOfRange",
    "deviceOffline",
    "dcExceedsAc",
    "badPayloads",
)
MWH_PER_KWH: Final = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    device_kind: str
    device_name: str
    rule: str
    value: float
    threshold: float
    verdict: Verdict
    nominal: float | None = None  # voltageOutOfRange: the meter's nominal voltage


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """Which devices a round judges: all of them (None), or those a batch just wrote."""

    meters: list[str] | None
    vehicles: list[str] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One query and how to turn each of its rows into observations."""

    name: str
    sql: str
    observe: Callable[[tuple[Any, ...], Settings], list[Observation]]
    time_driven: bool = False  # runs only in the periodic full rounds


def worse(
    rule: str,
    current: float,
    candidate: float,
    settings: Settings,
    *,
    nominal: float | None = None,
) -> bool:
    """Is ``candidate`` a worse value than ``current`` for this rule? A voltage is worse the
    farther it is from ``nominal`` (the meter's; default VOLTAGE_NOMINAL_V)."""
    if rule == "lowEfficiency":
        return candidate < current
    if rule == "voltageOutOfRange":
        nominal = settings.voltage_nominal_v if nominal is None else nominal
        return abs(candidate - nominal) > abs(current - nominal)
    return candidate > current


def parameters(settings: Settings, scope: Scope, now: datetime) -> dict[str, Any]:
    duration = timedelta(seconds=settings.voltage_min_duration_s)
    return {
        "meters": scope.meters,
        "vehicles": scope.vehicles,
        "now": now,
        "temp_raise": settings.battery_temp_raise_c,
        "temp_clear": settings.battery_temp_clear_c,
        "v_nominal": settings.voltage_nominal_v,
        "v_tolerance": settings.voltage_tolerance,
        "v_duration": duration,
        "v_lookback": duration + timedelta(hours=1),
        "offline_after": timedelta(seconds=settings.offline_after_s),
        "eff_window": timedelta(seconds=settings.efficiency_window_s),
        "bp_window": timedelta(seconds=settings.bad_payloads_window_s),
    }


def _battery(row: tuple[Any, ...], s: Settings) -> list[Observation]:
    name, temp = row
    verdict: Verdict = (
        "raise"
        if temp > s.battery_temp_raise_c
        else "clear"
        if temp < s.battery_temp_clear_c
        else "hold"
    )
    return [Observation("vehicle", name, "batteryOverTemp", temp, s.battery_temp_raise_c, verdict)]


def _voltage(row: tuple[Any, ...], s: Settings) -> list[Observation]:
    name, voltage, nominal, verdict = row
    threshold = nominal * (
        1 - s.voltage_tolerance if voltage < nominal else 1 + s.voltage_tolerance
    )
    return [Observation("meter", name, "voltageOutOfRange", voltage, threshold, verdict, nominal)]


def _offline(row: tuple[Any, ...], s: Settings) -> list[Observation]:
    kind, name, silent_s = row
    verdict: Verdict = "raise" if silent_s > s.offline_after_s else "clear"
    return [Observation(kind, name, "deviceOffline", silent_s, s.offline_after_s, verdict)]


def coverage(readings: int, seconds: float, interval_s: float) -> float:
    """The share of the readings expected one ``interval_s`` apart over ``seconds`` that
    arrived (at most 1; 0 over no time)."""
    return min(1.0, readings * interval_s / seconds) if seconds > 0 else 0.0


def _energy(row: tuple[Any, ...], s: Settings) -> list[Observation]:
    name, dc_mwh, ac_mwh, dc_readings, ac_readings, linked_s = row
    # Judged only over enough energy and enough readings: a window with half its meter readings
    # missing looks like a charger losing energy (or DC exceeding AC), and a ratio computed from
    # a few readings swings widely.
    covered = min(
        coverage(dc_readings, s.efficiency_window_s, s.reading_interval_s),
        coverage(ac_readings, linked_s, s.reading_interval_s),
    )
    enough = (
        max(dc_mwh, ac_mwh) >= s.efficiency_min_ac_kwh * MWH_PER_KWH
        and covered >= s.efficiency_min_coverage
    )
    ratio = dc_mwh / ac_mwh if ac_mwh else 0.0
    # Raised below the threshold, cleared only at or above it plus the hysteresis: a charger
    # hovering at the threshold raises once instead of flapping.
    low: Verdict = (
        "hold"
        if not enough or not ac_mwh
        else "raise"
        if ratio < s.efficiency_threshold
        else "clear"
        if ratio >= s.efficiency_threshold + s.efficiency_hysteresis
        else "hold"
    )
    over: Verdict = "hold" if not enough else ("raise" if dc_mwh > ac_mwh else "clear")
    excess_kwh = (dc_mwh - ac_mwh) / MWH_PER_KWH
    return [
        Observation("vehicle", name, "lowEfficiency", ratio, s.efficiency_threshold, low),
        Observation("vehicle", name, "dcExceedsAc", excess_kwh, 0.0, over),
    ]


def _bad_payloads(row: tuple[Any, ...], s: Settings) -> list[Observation]:
    kind, name, count = row
    verdict: Verdict = (
        "raise" if count >= s.bad_payloads_threshold else "clear" if count == 0 else "hold"
    )
    return [
        Observation(
            kind, name, "badPayloads", float(count), float(s.bad_payloads_threshold), verdict
        )
    ]


CHECKS: Final[Sequence[Check]] = (
    Check(
        "batteryOverTemp",
        """
        -- real, not cast to double: its text form is the value as sent (58.5, not 58.4999...)
        SELECT name, battery_temp FROM vehicle
        WHERE battery_temp IS NOT NULL
          AND (%(vehicles)s::text[] IS NULL OR name = ANY(%(vehicles)s::text[]))""",
        _battery,
    ),
    # Out of range "since" the first reading after the last one inside the band; raised once
    # that is at least the minimum duration before the latest reading. The band is around the
    # meter's own nominal voltage (the registry's), else VOLTAGE_NOMINAL_V: a 400 V three-phase
    # meter is not judged against 230 V.
    Check(
        "voltageOutOfRange",
        """
        SELECT m.name, m.voltage, band.nominal,
               CASE WHEN m.voltage BETWEEN band.lo AND band.hi THEN 'clear'
                    WHEN m.ts - since.ts >= %(v_duration)s THEN 'raise'
                    ELSE 'hold' END
        FROM meter m
        CROSS JOIN LATERAL (
            SELECT n.nominal, n.nominal * (1 - %(v_tolerance)s) AS lo,
                   n.nominal * (1 + %(v_tolerance)s) AS hi
            FROM (SELECT coalesce(m.nominal_voltage_v, %(v_nominal)s) AS nominal) n
        ) band
        LEFT JOIN LATERAL (
            SELECT min(r.ts) AS ts FROM meter_reading r
            WHERE r.meter_id = m.meter_id AND r.ts <= m.ts AND r.ts >= m.ts - %(v_lookback)s
              AND r.ts > coalesce((
                  SELECT max(g.ts) FROM meter_reading g
                  WHERE g.meter_id = m.meter_id AND g.ts <= m.ts
                    AND g.ts >= m.ts - %(v_lookback)s
                    AND g.voltage BETWEEN band.lo AND band.hi), '-infinity')
        ) since ON NOT (m.voltage BETWEEN band.lo AND band.hi)
        WHERE m.voltage IS NOT NULL
          AND (%(meters)s::text[] IS NULL OR m.name = ANY(%(meters)s::text[]))""",
        _voltage,
    ),
    Check(
        "deviceOffline",
        """
        SELECT 'meter', name, extract(epoch FROM %(now)s - received_at)::double precision
        FROM meter WHERE received_at IS NOT NULL
          AND (%(meters)s::text[] IS NULL OR name = ANY(%(meters)s::text[]))
        UNION ALL
        SELECT 'vehicle', name, extract(epoch FROM %(now)s - received_at)::double precision
        FROM vehicle WHERE received_at IS NOT NULL
          AND (%(vehicles)s::text[] IS NULL OR name = ANY(%(vehicles)s::text[]))""",
        _offline,
    ),
    # DC of the vehicle and AC of the meter(s) linked to it, over the window that ends at the
    # vehicle's latest reading; a link covers AC only while it held. With the readings counted
    # and the time linked, for the window's coverage.
    Check(
        "energy",
        """
        WITH v AS (
            SELECT vehicle_id, name, ts - %(eff_window)s AS lo, ts AS hi FROM vehicle
            WHERE ts IS NOT NULL
              AND (%(vehicles)s::text[] IS NULL OR name = ANY(%(vehicles)s::text[]))
        ), spans AS (
            SELECT v.vehicle_id, l.meter_id, greatest(l.valid_from, v.lo) AS lo,
                   least(coalesce(l.valid_to, 'infinity'), v.hi) AS hi
            FROM v JOIN vehicle_link l ON l.vehicle_id = v.vehicle_id
            WHERE l.valid_from <= v.hi AND (l.valid_to IS NULL OR l.valid_to > v.lo)
        ), linked AS (
            SELECT vehicle_id, sum(extract(epoch FROM hi - lo))::double precision AS seconds
            FROM spans GROUP BY 1
        ), ac AS (
            SELECT s.vehicle_id, sum(r.consumed_ac_mwh) AS mwh, count(*) AS n
            FROM spans s JOIN meter_reading r
              ON r.meter_id = s.meter_id AND r.ts > s.lo AND r.ts <= s.hi
            GROUP BY 1
        ), dc AS (
            SELECT v.vehicle_id, sum(r.delivered_dc_mwh) AS mwh, count(*) AS n
            FROM v JOIN vehicle_reading r
              ON r.vehicle_id = v.vehicle_id AND r.ts > v.lo AND r.ts <= v.hi
            WHERE v.vehicle_id IN (SELECT vehicle_id FROM spans)
            GROUP BY 1
        )
        SELECT v.name, coalesce(dc.mwh, 0), coalesce(ac.mwh, 0), coalesce(dc.n, 0),
               coalesce(ac.n, 0), linked.seconds
        FROM v JOIN linked USING (vehicle_id)
        LEFT JOIN dc USING (vehicle_id) LEFT JOIN ac USING (vehicle_id)""",
        _energy,
    ),
    # Devices with dead letters in the window, and those with an active alert (count 0 clears).
    Check(
        "badPayloads",
        """
        WITH counts AS (
            SELECT device_kind, device_name, sum(n) AS n FROM (
                SELECT device_kind, device_name, count(*) AS n FROM dead_letter
                WHERE received_at > %(now)s - %(bp_window)s
                  AND device_kind IS NOT NULL AND device_name IS NOT NULL
                GROUP BY 1, 2
                UNION ALL  -- those past the cap, counted per minute
                SELECT device_kind, device_name, sum(dead_letters) FROM dead_letter_overflow
                WHERE last_received_at > %(now)s - %(bp_window)s AND device_name <> ''
                GROUP BY 1, 2
            ) kept_and_counted
            GROUP BY 1, 2
        )
        SELECT d.device_kind, d.device_name, coalesce(c.n, 0)
        FROM (SELECT device_kind, device_name FROM counts
              UNION
              SELECT device_kind, device_name FROM alert
              WHERE rule = 'badPayloads' AND cleared_at IS NULL) d
        LEFT JOIN counts c USING (device_kind, device_name)""",
        _bad_payloads,
        time_driven=True,
    ),
)
