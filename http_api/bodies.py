"""What the API answers, as msgspec Structs: each view builds one and encodes it, and the OpenAPI
document's schemas are generated from these (http_api/openapi_schemas.py), so the two cannot
drift. Numbers are rounded before they get here (http_api/render.py); their units are in the
field types. The device registry's bodies are in http_api/device_bodies.py, raw readings' and dead
letters' in http_api/history_bodies.py, ingestion's in http_api/views_ingest.py."""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.alert_messages import Alert, Time

Kwh = Annotated[float, Meta(description="kWh, to the Wh (3 decimals)")]
Kw = Annotated[float, Meta(description="kW, to the W (3 decimals)")]
Celsius = Annotated[float, Meta(description="°C, to 0.1")]
Volts = Annotated[float, Meta(description="V, to 0.1")]
Percent = Annotated[float, Meta(ge=0, le=100, description="state of charge, %, to 0.1")]
Efficiency = Annotated[
    float, Meta(ge=0, description="DC into the battery / AC billed by its meters, 4 decimals")
]
Coverage = Annotated[
    float, Meta(ge=0, le=1, description="readings received / readings expected, 4 decimals")
]
Count = Annotated[int, Meta(ge=0)]
EfficiencyStatus: TypeAlias = Literal[
    "excellent", "good", "warning", "critical", "suspect", "noData"
]
# Every code an error of this API carries; a test checks that each error class has its own.
ErrorCode: TypeAlias = Literal[
    "badRequest",
    "invalidParameter",
    "unknownParameter",
    "invalidBody",
    "invalidReading",
    "unauthorized",
    "forbidden",
    "notFound",
    "methodNotAllowed",
    "conflict",
    "bodyTooLarge",
    "readingTooLarge",
    "unsupportedMediaType",
    "unknownDevice",
    "tooManyRequests",
    "internalError",
    "brokerUnavailable",
    "databaseUnavailable",
    "httpError",
]


class ErrorDetail(msgspec.Struct, rename="camel", omit_defaults=True):
    """What went wrong: a code to act on, a sentence for people, the parameter at fault."""

    code: ErrorCode
    message: str
    parameter: str | UnsetType = UNSET  # a path or query parameter, or a field of the body
    request_id: str | UnsetType = UNSET  # on a 500: quote it, the log has the trace


class Error(msgspec.Struct):
    """Every error answer (4xx, 5xx): ``{"error": {...}}``."""

    error: ErrorDetail


class VehicleStatus(msgspec.Struct, rename="camel"):
    """A vehicle's latest reading (null before its first) and what it means now."""

    vehicle_id: str
    online: bool  # its latest reading was taken within ONLINE_SILENCE_S
    charging: bool  # online, and energy went into the battery in the latest interval
    battery_temp_warning: bool  # latest battery temperature at or above BATTERY_TEMP_WARNING_C
    taken_at: Time | None
    received_at: Time | None
    first_seen_at: Time
    soc: Percent | None
    delivered_dc: Kwh | None  # energy of the latest interval
    battery_temp: Celsius | None
    meter_id: str | None  # the meter linked now


class MeterStatus(msgspec.Struct, rename="camel"):
    """A meter's latest reading (null before its first)."""

    meter_id: str
    online: bool
    taken_at: Time | None
    received_at: Time | None
    first_seen_at: Time
    consumed_ac: Kwh | None  # energy of the latest interval
    voltage: Volts | None
    vehicle_id: str | None  # the vehicle linked now


class MeterCounts(msgspec.Struct):
    online: Count
    offline: Count


class VehicleCounts(msgspec.Struct, rename="camel"):
    online: Count
    offline: Count
    charging: Count
    battery_temp_warning: Count


class Overview(msgspec.Struct, rename="camel"):
    """The fleet now, from the live rows."""

    meters: MeterCounts
    vehicles: VehicleCounts
    fleet_power_kw: Kw  # online meters' latest interval energy over READING_INTERVAL_S
    online_silence_seconds: float


class VehicleList(msgspec.Struct, rename="camel"):
    vehicles: list[VehicleStatus]
    next_cursor: str | None  # null: the last page


class MeterList(msgspec.Struct, rename="camel"):
    meters: list[MeterStatus]
    next_cursor: str | None  # null: the last page


class Link(msgspec.Struct, rename="camel"):
    """A meter feeding a vehicle's charger over [validFrom, validTo)."""

    vehicle_id: str
    meter_id: str
    valid_from: Time
    valid_to: Time | None  # null: holds now


class LinkList(msgspec.Struct, rename="camel"):
    links: list[Link]  # by vehicle id
    next_cursor: str | None  # null: the last page


class VehicleLinks(msgspec.Struct, rename="camel"):
    vehicle_id: str
    current: Link | None
    history: list[Link]  # newest first, the current one included


class Window(msgspec.Struct):
    """[from, to): the span the figures cover (to clamped to now)."""

    from_: Time = msgspec.field(name="from")
    to: Time


class ReadingCounts(msgspec.Struct):
    ac: Count  # meter readings while linked
    dc: Count  # vehicle readings over the window


class ReadingCoverage(msgspec.Struct):
    """Readings received over those expected one READING_INTERVAL_S apart; null: no span."""

    ac: Coverage | None  # over the linked time
    dc: Coverage | None  # over the window


class Figures(msgspec.Struct, rename="camel"):
    """Charging figures over a span: energies from integer mWh, exact, then rounded."""

    total_ac: Kwh  # billed by the linked meters while linked
    total_dc: Kwh  # into the battery over the whole span
    dc_while_linked: Kwh
    efficiency: Efficiency | None  # dcWhileLinked / totalAc; null: no AC or no DC to compare
    efficiency_status: EfficiencyStatus
    avg_battery_temp: Celsius | None
    min_battery_temp: Celsius | None
    max_battery_temp: Celsius | None
    readings: ReadingCounts
    coverage: ReadingCoverage


class MeterSegment(msgspec.Struct, rename="camel"):
    """One link segment of a window: a meter, when, and what it billed."""

    meter_id: str
    from_: Time = msgspec.field(name="from")
    to: Time
    total_ac: Kwh
    readings: Count


class Performance(Figures):
    vehicle_id: str
    window: Window
    meters: list[MeterSegment]


class TrendHour(Figures):
    hour: Time  # the UTC hour's start; the first and last hour may be cut by the window


class Trend(msgspec.Struct, rename="camel"):
    vehicle_id: str
    window: Window
    hours: list[TrendHour]


class FleetVehicle(Figures):
    vehicle_id: str


class StatusCounts(msgspec.Struct, rename="camel", omit_defaults=True):
    """Vehicles by efficiency status (a status no vehicle has is left out)."""

    excellent: Count = 0
    good: Count = 0
    warning: Count = 0
    critical: Count = 0
    suspect: Count = 0
    no_data: Count = 0


class FleetTotals(msgspec.Struct, rename="camel"):
    vehicles: Count
    total_ac: Kwh  # every meter's, linked or not
    total_dc: Kwh  # every vehicle's, linked or not
    matched_ac: Kwh  # of the meters linked to a vehicle with DC, while linked
    matched_dc: Kwh  # those vehicles' DC while linked
    efficiency: Efficiency | None  # matchedDc / matchedAc
    by_status: StatusCounts


class Fleet(msgspec.Struct, rename="camel"):
    """Every vehicle paired with its own meters; the page of the worst below a threshold."""

    window: Window
    computed_at: Time  # the default view is computed once a minute and served to all
    totals: FleetTotals
    below: float
    vehicles: list[FleetVehicle]  # by efficiency, worst first
    next_cursor: str | None


class AlertList(msgspec.Struct, rename="camel"):
    alerts: list[Alert]  # the message MQTT subscribers receive (gateway/alert_messages.py)
    next_cursor: str | None


# The answers documented in components/schemas, in the document's order.
RESPONSES: tuple[type[msgspec.Struct], ...] = (
    Error,
    Overview,
    VehicleStatus,
    VehicleList,
    MeterStatus,
    MeterList,
    Link,
    LinkList,
    VehicleLinks,
    Performance,
    Trend,
    Fleet,
    Alert,
    AlertList,
)
