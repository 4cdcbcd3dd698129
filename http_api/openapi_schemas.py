"""Schemas of the OpenAPI document (components/schemas)."""

from __future__ import annotations

from typing import Any, Final

TIME: Final = {"type": "string", "format": "date-time"}
NUMBER_OR_NULL: Final = {"type": ["number", "null"]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": "#/components/schemas/" + name}


SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["invalidParameter", "notFound"]},
                    "parameter": {"type": "string"},
                    "message": {"type": "string"},
                    "requestId": {"type": "string"},
                },
            }
        },
    },
    "VehicleStatus": {
        "type": "object",
        "properties": {
            "vehicleId": {"type": "string"},
            "online": {"type": "boolean"},
            "charging": {"type": "boolean"},
            "batteryTempWarning": {"type": "boolean"},
            "takenAt": {"type": ["string", "null"], "format": "date-time"},
            "receivedAt": {"type": ["string", "null"], "format": "date-time"},
            "firstSeenAt": TIME,
            "soc": NUMBER_OR_NULL,
            "deliveredDc": NUMBER_OR_NULL,
            "batteryTemp": NUMBER_OR_NULL,
            "meterId": {"type": ["string", "null"]},
        },
    },
    "MeterStatus": {
        "type": "object",
        "properties": {
            "meterId": {"type": "string"},
            "online": {"type": "boolean"},
            "takenAt": {"type": ["string", "null"], "format": "date-time"},
            "receivedAt": {"type": ["string", "null"], "format": "date-time"},
            "firstSeenAt": TIME,
            "consumedAc": NUMBER_OR_NULL,
            "voltage": NUMBER_OR_NULL,
            "vehicleId": {"type": ["string", "null"]},
        },
    },
    "Overview": {
        "type": "object",
        "properties": {
            "meters": {"type": "object"},
            "vehicles": {"type": "object"},
            "fleetPowerKw": {"type": "number"},
            "onlineSilenceSeconds": {"type": "number"},
        },
    },
    "VehicleList": {
        "type": "object",
        "properties": {
            "vehicles": {"type": "array", "items": ref("VehicleStatus")},
            "nextCursor": {"type": ["string", "null"]},
        },
    },
    "NewLink": {
        "type": "object",
        "required": ["vehicleId", "meterId"],
        "additionalProperties": False,
        "properties": {
            "vehicleId": {"type": "string"},
            "meterId": {"type": "string"},
            "since": {**TIME, "description": "When the link took effect (default now)."},
        },
    },
    "Link": {
        "type": "object",
        "properties": {
            "vehicleId": {"type": "string"},
            "meterId": {"type": "string"},
            "validFrom": TIME,
            "validTo": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Figures": {
        "type": "object",
        "properties": {
            "totalAc": {"type": "number", "description": "kWh billed by the linked meter(s)."},
            "totalDc": {"type": "number", "description": "kWh into the battery, whole window."},
            "dcWhileLinked": {"type": "number"},
            "efficiency": {**NUMBER_OR_NULL, "description": "dcWhileLinked / totalAc."},
            "efficiencyStatus": {
                "enum": ["excellent", "good", "warning", "critical", "suspect", "noData"]
            },
            "avgBatteryTemp": NUMBER_OR_NULL,
            "minBatteryTemp": NUMBER_OR_NULL,
            "maxBatteryTemp": NUMBER_OR_NULL,
            "readings": {"type": "object"},
            "coverage": {"type": "object"},
        },
    },
    "Performance": {
        "allOf": [
            ref("Figures"),
            {
                "type": "object",
                "properties": {
                    "vehicleId": {"type": "string"},
                    "window": {"type": "object"},
                    "meters": {"type": "array", "items": {"type": "object"}},
                },
            },
        ]
    },
    "Trend": {
        "type": "object",
        "properties": {
            "vehicleId": {"type": "string"},
            "window": {"type": "object"},
            "hours": {
                "type": "array",
                "items": {
                    "allOf": [ref("Figures"), {"type": "object", "properties": {"hour": TIME}}]
                },
            },
        },
    },
    "Fleet": {
        "type": "object",
        "properties": {
            "window": {"type": "object"},
            "totals": {"type": "object"},
            "below": {"type": "number"},
            "vehicles": {"type": "array", "items": ref("Figures")},
            "nextCursor": {"type": ["string", "null"]},
        },
    },
    "Alert": {
        "type": "object",
        "properties": {
            "alertId": {"type": "string"},
            "rule": {"type": "string"},
            "state": {"enum": ["active", "cleared"]},
            "deviceId": {"type": "string"},
            "deviceKind": {"type": "string", "examples": ["vehicle", "meter"]},
            "value": {"type": "number", "description": "The worst value seen while active."},
            "threshold": {"type": "number"},
            "clearValue": {**NUMBER_OR_NULL, "description": "The value that cleared it."},
            "raisedAt": TIME,
            "clearedAt": {"type": ["string", "null"], "format": "date-time"},
            "message": {"type": "string"},
        },
    },
    "AlertList": {
        "type": "object",
        "properties": {
            "alerts": {"type": "array", "items": ref("Alert")},
            "nextCursor": {"type": ["string", "null"]},
        },
    },
    "Reading": {
        "description": "A meter or vehicle reading as on MQTT, with its device id.",
        "oneOf": [
            {"type": "object", "required": ["meterId", "kwhConsumedAc", "voltage", "timestamp"]},
            {
                "type": "object",
                "required": ["vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "timestamp"],
            },
        ],
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "database": {"type": "object"},
            "broker": {"type": "object"},
            "gateway": {"type": "object"},
        },
    },
}
