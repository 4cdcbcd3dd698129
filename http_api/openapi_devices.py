"""The device registry's part of the OpenAPI document: its paths, and its schemas generated from
the Structs it decodes and encodes (http_api/device_bodies.py), so the two cannot drift."""

from __future__ import annotations

from typing import Any, Final

from gateway.registry import KINDS, STATES
from http_api.device_bodies import (
    SITE_PATTERN,
    TAG_PATTERN,
    Device,
    DeviceList,
    DeviceWithSecret,
    ImportResult,
    MeterChange,
    NewDevice,
    VehicleChange,
)
from http_api.device_import import CSV_COLUMNS
from http_api.openapi_operations import (
    PAGE_PARAMS,
    json_content,
    operation,
    path_param,
    query_param,
)
from http_api.openapi_schemas import ecma, generated, ref


def _schemas() -> dict[str, Any]:
    named = {"NewDevice": NewDevice, "Device": Device}
    structs = (*named.values(), MeterChange, VehicleChange, DeviceList, DeviceWithSecret)
    unions, components = generated((*structs, ImportResult))
    components.update(zip(named, unions[: len(named)], strict=True))
    components["DeviceChange"] = {
        "description": "The fields to change (null clears one); metadata of the path's kind.",
        "oneOf": [ref("MeterChange"), ref("VehicleChange")],
    }
    return components


DEVICE_SCHEMAS: Final = _schemas()
_KIND: Final = {
    **path_param("kind", "meter or vehicle."),
    "schema": {"type": "string", "enum": list(KINDS)},
}
_DEVICE: Final = [_KIND, path_param("id", "Device id, as in its MQTT topic.")]
_UNKNOWN: Final = {"404": "No such device is registered."}
_ADMIN: Final = " (scope admin)"


def _import() -> dict[str, Any]:
    described = operation(
        "Register or update many devices in one transaction" + _ADMIN,
        ("200", "ImportResult", "Every row imported: created, updated or unchanged"),
        body="NewDevice",
        errors={"415": "Neither text/csv nor application/json."},
    )
    described["responses"]["207"] = json_content(
        ref("ImportResult"),
        "Some rows refused (row, column and message in results); the others imported.",
    )
    described["requestBody"]["content"] = {
        "text/csv": {
            "schema": {
                "type": "string",
                "description": "A header row naming some of these columns (kind and id "
                f"required): {', '.join(CSV_COLUMNS)}; tags separated by spaces.",
            }
        },
        "application/json": {"schema": {"type": "array", "items": ref("NewDevice")}},
    }
    return described


DEVICE_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/v1/devices": {
        "post": operation(
            "Register a device; its broker secret is shown once" + _ADMIN,
            ("201", "DeviceWithSecret", "Registered"),
            body="NewDevice",
            errors={"409": "Already registered (PATCH it, or import it)."},
        ),
        "get": operation(
            "Registered devices, by kind then id" + _ADMIN,
            ("200", "DeviceList", "A page"),
            params=[
                query_param("kind", {"type": "string", "enum": list(KINDS)}, "Only this kind."),
                query_param(
                    "state", {"type": "string", "enum": list(STATES)}, "Only devices in it."
                ),
                query_param(
                    "site", {"type": "string", "pattern": ecma(SITE_PATTERN)}, "Only this site."
                ),
                query_param(
                    "tag",
                    {"type": "string", "pattern": ecma(TAG_PATTERN)},
                    "Only devices with it.",
                ),
                *PAGE_PARAMS,
            ],
        ),
    },
    "/v1/devices/import": {"post": _import()},
    "/v1/devices/{kind}/{id}": {
        "get": operation(
            "A registered device" + _ADMIN,
            ("200", "Device", "The device"),
            params=_DEVICE,
            errors=_UNKNOWN,
        ),
        "patch": operation(
            "Change a device's name, site, tags, metadata or state" + _ADMIN,
            ("200", "Device", "The device as changed"),
            params=_DEVICE,
            body="DeviceChange",
            errors=_UNKNOWN,
        ),
        "delete": operation(
            "Delete a device that has no history (never reported, never linked)" + _ADMIN,
            ("200", "Device", "The device as it was"),
            params=_DEVICE,
            errors={**_UNKNOWN, "409": "It has history: disable it instead."},
        ),
    },
    "/v1/devices/{kind}/{id}/rotate-secret": {
        "post": operation(
            "A new broker secret, shown once; the old one stops working" + _ADMIN,
            ("200", "DeviceWithSecret", "Rotated"),
            params=_DEVICE,
            errors=_UNKNOWN,
        )
    },
    "/v1/devices/{kind}/{id}/disable": {
        "post": operation(
            "Disable a device: its login stops working, its history is kept" + _ADMIN,
            ("200", "Device", "Disabled"),
            params=_DEVICE,
            errors=_UNKNOWN,
        )
    },
}
