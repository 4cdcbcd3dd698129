"""The device registry's messages: what a client sends to create, import or change a device, and
what it gets back. The OpenAPI schemas of the device routes are generated from these Structs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias, cast

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.broker_logins import device_username
from gateway.readings import DEVICE_ID_RULE, DeviceId
from gateway.registry import DeviceRecord, RegisteredDevice

# Display names are free text on one line; sites and tags are keys to filter by: letters of any
# script, digits and a little punctuation (a site may have single spaces between words).
NAME_RULE: Final = "1-200 characters, no control characters"
SITE_PATTERN: Final = r"\A[\w.:/-]+(?: [\w.:/-]+)*\Z"
SITE_RULE: Final = "1-100 letters, digits or ._:/- (single spaces between words)"
TAG_PATTERN: Final = r"\A[\w.:/=-]{1,64}\Z"
TAG_RULE: Final = "1-64 letters, digits or ._:/=- each, at most 32 tags"
MAX_VOLTAGE_V: Final = 1000.0  # what a reading may carry (gateway.readings.Voltage)

DisplayName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"\A[^\x00-\x1f\x7f]+\Z")]
Site = Annotated[str, Meta(max_length=100, pattern=SITE_PATTERN)]
Tag = Annotated[str, Meta(pattern=TAG_PATTERN)]
Tags = Annotated[list[Tag], Meta(max_length=32)]
State: TypeAlias = Literal["active", "disabled"]
NominalVoltage = Annotated[float, Meta(gt=0, le=MAX_VOLTAGE_V)]
Phases: TypeAlias = Literal[1, 3]
BatteryCapacity = Annotated[float, Meta(gt=0, le=100_000)]


class MeterMetadata(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A meter's: its nominal voltage (the voltage alert judges against it; null: the
    gateway's VOLTAGE_NOMINAL_V) and its phases."""

    nominal_voltage_v: NominalVoltage | None = None
    phases: Phases | None = None


class VehicleMetadata(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    battery_capacity_kwh: BatteryCapacity | None = None


class _NewDevice(msgspec.Struct, rename="camel", forbid_unknown_fields=True, tag_field="kind"):
    id: DeviceId
    name: DisplayName | None = None
    site: Site | None = None
    tags: Tags = []
    state: State | None = None  # null: active when created, unchanged on import if it exists


class NewMeter(_NewDevice, tag="meter"):
    metadata: MeterMetadata = msgspec.field(default_factory=MeterMetadata)


class NewVehicle(_NewDevice, tag="vehicle"):
    metadata: VehicleMetadata = msgspec.field(default_factory=VehicleMetadata)


NewDevice: TypeAlias = NewMeter | NewVehicle


class MeterMetadataChange(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    nominal_voltage_v: NominalVoltage | UnsetType | None = UNSET
    phases: Phases | UnsetType | None = UNSET


class VehicleMetadataChange(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    battery_capacity_kwh: BatteryCapacity | UnsetType | None = UNSET


class _DeviceChange(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """PATCH: what is named changes (null clears), the rest stays."""

    name: DisplayName | UnsetType | None = UNSET
    site: Site | UnsetType | None = UNSET
    tags: Tags | UnsetType = UNSET
    state: State | UnsetType = UNSET


class MeterChange(_DeviceChange):
    metadata: MeterMetadataChange | UnsetType = UNSET


class VehicleChange(_DeviceChange):
    metadata: VehicleMetadataChange | UnsetType = UNSET


class _Device(msgspec.Struct, rename="camel", tag_field="kind"):
    """A registered device; its secret is never shown again, only whether it has one."""

    id: str
    name: str | None
    site: str | None
    tags: list[str]
    state: State
    mqtt_username: str
    has_secret: bool
    created_at: datetime
    last_seen_at: datetime | None  # when its latest reading arrived; null: never


class MeterDevice(_Device, tag="meter"):
    metadata: MeterMetadata


class VehicleDevice(_Device, tag="vehicle"):
    metadata: VehicleMetadata


Device: TypeAlias = MeterDevice | VehicleDevice


class DeviceList(msgspec.Struct, rename="camel"):
    devices: list[Device]
    next_cursor: str | None


class DeviceWithSecret(msgspec.Struct, rename="camel"):
    """A new device, or one whose secret was rotated: its broker login, the secret shown once."""

    device: Device
    mqtt_username: str
    secret: str


class ImportedRow(msgspec.Struct, rename="camel"):
    """One row of an import: what happened to its device, or what is wrong with it (column:
    the field, as named in the CSV header or the JSON object; null: the row as a whole)."""

    row: int  # 1 is the first device (CSV: the first line after the header)
    status: Literal["created", "updated", "unchanged", "error"]
    kind: str | UnsetType = UNSET
    id: str | UnsetType = UNSET
    mqtt_username: str | UnsetType = UNSET
    secret: str | UnsetType = UNSET  # issued now (a new device, or one without a login): once
    column: str | UnsetType | None = UNSET
    message: str | UnsetType = UNSET


class ImportResult(msgspec.Struct, rename="camel"):
    created: int
    updated: int
    unchanged: int
    errors: int
    results: list[ImportedRow]


def record_of(body: NewDevice) -> DeviceRecord:
    if isinstance(body, NewMeter):
        metadata: dict[str, Any] = {
            "nominal_voltage_v": body.metadata.nominal_voltage_v,
            "phases": body.metadata.phases,
        }
    else:
        metadata = {"battery_capacity_kwh": body.metadata.battery_capacity_kwh}
    return DeviceRecord(
        kind="meter" if isinstance(body, NewMeter) else "vehicle",
        device_id=body.id,
        name=body.name,
        site=body.site,
        tags=tuple(sorted(set(body.tags))),  # a set: the order a client sends never matters
        state=body.state,
        **metadata,
    )


def changes_of(body: MeterChange | VehicleChange) -> dict[str, Any]:
    """The registry columns a PATCH sets."""
    given: dict[str, Any] = {
        "display_name": body.name,
        "site": body.site,
        "tags": body.tags if body.tags is UNSET else sorted(set(body.tags)),
        "state": body.state,
    }
    if not isinstance(body.metadata, UnsetType):
        given.update(msgspec.structs.asdict(body.metadata))
    return {column: value for column, value in given.items() if value is not UNSET}


def device_of(row: RegisteredDevice) -> Device:
    common: dict[str, Any] = {
        "id": row.device_id,
        "name": row.name,
        "site": row.site,
        "tags": row.tags,
        "state": row.state,
        "mqtt_username": device_username(row.kind, row.device_id),
        "has_secret": row.has_secret,
        "created_at": row.created_at.astimezone(UTC),
        "last_seen_at": row.last_seen_at.astimezone(UTC) if row.last_seen_at else None,
    }
    if row.kind == "meter":
        phases = cast("Phases | None", row.phases)  # the database's CHECK: 1, 3 or NULL
        return MeterDevice(**common, metadata=MeterMetadata(row.nominal_voltage_v, phases))
    return VehicleDevice(**common, metadata=VehicleMetadata(row.battery_capacity_kwh))


_AT: Final = re.compile(r" - at `\$([^`]*)`\Z")
_FIELD: Final = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
_RULES: Final = {"id": DEVICE_ID_RULE, "name": NAME_RULE, "site": SITE_RULE, "tags": TAG_RULE}


def invalid_field(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """The field a validation error is about (``metadata.phases``, ``tags[2]``; None: the
    whole object) and what is wrong, in words rather than msgspec's regular expressions."""
    text = str(exc)
    at = _AT.search(text)
    path = at[1].lstrip(".") if at else ""
    message = text[: at.start()] if at else text
    named = _FIELD.search(message)
    if named:
        path = f"{path}.{named[1]}" if path else named[1]
    column = path or None
    if "matching regex" in message and column is not None:
        rule = _RULES.get(re.sub(r"\[\d+\]\Z", "", column))
        message = f"must be {rule}" if rule else message
    return column, message
