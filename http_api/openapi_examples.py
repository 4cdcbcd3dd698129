"""Examples of the OpenAPI document, as the Structs the API answers with: each is encoded as the
API would encode it, and a test validates each against its schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from gateway.alert_messages import Alert
from http_api import bodies, history_bodies

_AT: Final = datetime(2026, 2, 9, 8, 0, tzinfo=UTC)
_TAKEN: Final = datetime(2026, 2, 9, 7, 59, 12, tzinfo=UTC)
_RECEIVED: Final = datetime(2026, 2, 9, 7, 59, 12, 310000, tzinfo=UTC)
_SINCE: Final = datetime(2026, 1, 12, 9, 30, tzinfo=UTC)
_WINDOW: Final = bodies.Window(from_=datetime(2026, 2, 8, 8, 0, tzinfo=UTC), to=_AT)
_FIGURES: Final[dict[str, Any]] = {
    "total_ac": 48.212,
    "total_dc": 42.907,
    "dc_while_linked": 42.907,
    "efficiency": 0.89,
    "efficiency_status": "good",
    "avg_battery_temp": 31.4,
    "min_battery_temp": 24.8,
    "max_battery_temp": 38.9,
    "readings": bodies.ReadingCounts(ac=1438, dc=1440),
    "coverage": bodies.ReadingCoverage(ac=0.9986, dc=1.0),
}

EXAMPLES: Final[dict[str, msgspec.Struct]] = {
    "Error": bodies.Error(
        bodies.ErrorDetail(
            code="invalidParameter",
            message="'yesterday' is not an RFC 3339 time such as 2026-02-09T08:00:00Z",
            parameter="from",
        )
    ),
    "Overview": bodies.Overview(
        meters=bodies.MeterCounts(online=118, offline=2),
        vehicles=bodies.VehicleCounts(online=97, offline=23, charging=41, battery_temp_warning=1),
        fleet_power_kw=287.304,
        online_silence_seconds=180.0,
    ),
    "VehicleStatus": bodies.VehicleStatus(
        vehicle_id="EV-0042",
        online=True,
        charging=True,
        battery_temp_warning=False,
        taken_at=_TAKEN,
        received_at=_RECEIVED,
        first_seen_at=_SINCE,
        soc=61.5,
        delivered_dc=0.118,
        battery_temp=33.1,
        meter_id="M-0042",
    ),
    "MeterStatus": bodies.MeterStatus(
        meter_id="M-0042",
        online=True,
        taken_at=_TAKEN,
        received_at=_RECEIVED,
        first_seen_at=_SINCE,
        consumed_ac=0.131,
        voltage=231.4,
        vehicle_id="EV-0042",
    ),
    "Link": bodies.Link(vehicle_id="EV-0042", meter_id="M-0042", valid_from=_SINCE, valid_to=None),
    "Performance": bodies.Performance(
        vehicle_id="EV-0042",
        window=_WINDOW,
        meters=[
            bodies.MeterSegment(
                meter_id="M-0042", from_=_WINDOW.from_, to=_AT, total_ac=48.212, readings=1438
            )
        ],
        **_FIGURES,
    ),
    "Fleet": bodies.Fleet(
        window=_WINDOW,
        computed_at=_AT,
        totals=bodies.FleetTotals(
            vehicles=120,
            total_ac=5120.448,
            total_dc=4467.102,
            matched_ac=4991.307,
            matched_dc=4402.333,
            efficiency=0.882,
            by_status=bodies.StatusCounts(excellent=31, good=58, warning=19, critical=3, no_data=9),
        ),
        below=0.85,
        vehicles=[
            bodies.FleetVehicle(
                vehicle_id="EV-0042",
                **_FIGURES | {"efficiency": 0.7412, "efficiency_status": "critical"},
            )
        ],
        next_cursor=None,
    ),
    "Alert": Alert(
        alert_id="311",
        rule="batteryOverTemp",
        state="raised",
        device_id="EV-0042",
        device_kind="vehicle",
        value=57.2,
        threshold=55.0,
        clear_value=None,
        raised_at=_TAKEN,
        cleared_at=None,
        acknowledged_at=_AT,
        acknowledged_by="depot-north (token 7)",
        acknowledged_note="Bay 4, cooling checked",
        message="Battery over temperature on EV-0042: 57.2 °C, threshold 55.0 °C.",
    ),
    "DeadLetter": history_bodies.DeadLetter(
        dead_letter_id="90211",
        received_at=_RECEIVED,
        topic="fleet/meter/M-0042",
        device_kind="meter",
        device_id="M-0042",
        reason="invalid reading: Expected `number`, got `str` - at `$.voltage`",
        payload_bytes=43,
        payload_base64="eyJrd2hDb25zdW1lZEFjIjogMC4xMzEsICJ2b2x0YWdlIjogImhpZ2gifQ==",
        payload_preview='{"kwhConsumedAc": 0.131, "voltage": "high"}',
        payload_truncated=False,
    ),
}
