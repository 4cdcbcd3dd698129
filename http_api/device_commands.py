"""``python -m http_api device create|import|list|show|update|rotate|disable|delete``: the device
registry for operators without HTTP tooling; the same operations and checks as /v1/devices."""

from __future__ import annotations

import argparse
import asyncio
import csv
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import psycopg

from gateway.database import apply_schema
from gateway.readings import DeviceKind
from gateway.registry import KINDS, STATES, DeviceFilter
from http_api import devices
from http_api.device_bodies import (
    Device,
    DeviceWithSecret,
    MeterChange,
    MeterDevice,
    NewDevice,
    VehicleChange,
    invalid_field,
)
from http_api.device_import import Row, rows_from_csv, rows_from_json
from http_api.errors import ApiError
from http_api.settings import Settings
from http_api.startup import one_line

_PROGRAM: Final = "fleetgate-api"
# The options as they map onto the fields of a device message (the JSON shape).
_OPTIONS: Final = {
    "name": "--name",
    "site": "--site",
    "tags": "--tags",
    "state": "--state",
    "nominal_voltage": "--nominal-voltage",
    "phases": "--phases",
    "battery_capacity": "--battery-capacity",
}
_FIELDS: Final = {
    "name": "name",
    "site": "site",
    "tags": "tags",
    "state": "state",
    "nominal_voltage": "metadata.nominalVoltageV",
    "phases": "metadata.phases",
    "battery_capacity": "metadata.batteryCapacityKwh",
}
_RESULT_COLUMNS: Final = (
    "row",
    "status",
    "kind",
    "id",
    "mqttUsername",
    "secret",
    "column",
    "message",
)
_PAGE: Final = 1000


class _UsageError(Exception):
    """An option with a value the registry does not take."""


def add_device_commands(commands: Any) -> None:
    """The ``device`` command and its verbs, on the subparsers of ``python -m http_api``."""
    device = commands.add_parser("device", help="register and manage devices (the registry)")
    verbs = device.add_subparsers(dest="verb", required=True)

    def one(verb: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(verb, help=text, description=text)
        parser.add_argument("kind", choices=KINDS)
        parser.add_argument("id", help="the device id, as in its topic")
        return parser

    create = one("create", "register a device; prints its MQTT username and secret (shown once)")
    update = one("update", "change a device (an empty value clears a field)")
    for parser in (create, update):
        parser.add_argument("--name", help="display name")
        parser.add_argument("--site", help="site or group")
        parser.add_argument("--tags", help="tags, separated by spaces")
        parser.add_argument("--state", choices=STATES)
        parser.add_argument("--nominal-voltage", help="meters: nominal voltage in V")
        parser.add_argument("--phases", help="meters: 1 or 3")
        parser.add_argument("--battery-capacity", help="vehicles: battery capacity in kWh")
    bulk = verbs.add_parser(
        "import",
        help="register or update devices from a CSV (header row) or JSON (array) file",
        description="Prints one CSV line per row (secrets of new devices shown once).",
    )
    bulk.add_argument("file", help="the file, or - for standard input")
    bulk.add_argument("--format", choices=("csv", "json"), help="default: by the file's suffix")
    listing = verbs.add_parser("list", help="list devices (never their secrets)")
    listing.add_argument("--kind", choices=KINDS)
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--site")
    listing.add_argument("--tag")
    one("show", "show a device")
    one("rotate", "give a device a new secret (shown once); the old one stops working")
    one("disable", "disable a device: its login stops working, its history is kept")
    one("delete", "delete a device that has no history (never reported, never linked)")


def run_device_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run a device command: 0 done, 1 refused (the reason on stderr, one line; also when the
    database cannot be reached), 2 a bad option."""
    try:
        return asyncio.run(_run(args, settings.database_url))
    except psycopg.OperationalError as exc:
        return _fail(f"cannot reach the database: {one_line(exc)}")
    except ApiError as exc:
        return _fail(exc.message)
    except _UsageError as exc:
        return _fail(str(exc), status=2)


def _fail(message: str, status: int = 1) -> int:
    print(f"{_PROGRAM}: {message}", file=sys.stderr)
    return status


async def _run(args: argparse.Namespace, url: str) -> int:
    verb: str = args.verb
    rows = _import_rows(args) if verb == "import" else None  # a bad file fails before connecting
    message: Any = _message(args) if verb in ("create", "update") else None
    await apply_schema(url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        if rows is not None:
            result = await devices.import_rows(conn, rows)
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(_RESULT_COLUMNS)
            for row in result.results:
                cells = msgspec.structs.astuple(row)
                writer.writerow(["" if v is None or v is msgspec.UNSET else v for v in cells])
            print(
                f"{result.created} created, {result.updated} updated, "
                f"{result.unchanged} unchanged, {result.errors} refused",
                file=sys.stderr,
            )
            return 1 if result.errors else 0
        if verb == "list":
            await _list(conn, args)
            return 0
        kind: DeviceKind = args.kind
        actions: dict[str, Callable[[], Awaitable[Device | DeviceWithSecret]]] = {
            "create": lambda: devices.create(conn, message),
            "update": lambda: devices.update(conn, kind, args.id, message),
            "show": lambda: devices.find(conn, kind, args.id),
            "rotate": lambda: devices.rotate_secret(conn, kind, args.id),
            "disable": lambda: devices.disable(conn, kind, args.id),
            "delete": lambda: devices.delete(conn, kind, args.id),
        }
        done = await actions[verb]()
    if isinstance(done, DeviceWithSecret):
        print(_describe(done.device))
        print(f"mqtt username: {done.mqtt_username}\nsecret (shown once): {done.secret}")
    else:
        print(_describe(done) + ("\ndeleted" if verb == "delete" else ""))
    return 0


def _message(args: argparse.Namespace) -> NewDevice | MeterChange | VehicleChange:
    """The options as the message the HTTP API takes, checked the same way."""
    given: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for option, field in _FIELDS.items():
        value = getattr(args, option)
        if value is None:
            continue
        value = value.strip() or None  # an empty value clears the field
        if option == "tags":
            value = value.split() if value else []
        elif value is None and args.verb == "create":
            continue
        name = field.removeprefix("metadata.")
        (metadata if field.startswith("metadata.") else given)[name] = value
    if metadata:
        given["metadata"] = metadata
    kind = args.kind
    target: Any = MeterChange if kind == "meter" else VehicleChange
    if args.verb == "create":
        given |= {"kind": kind, "id": args.id}
        target = NewDevice
    try:
        return msgspec.convert(given, target, strict=False)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        wrong, message = invalid_field(exc)
        path = None if wrong is None else re.sub(r"\[\d+\]\Z", "", wrong)  # tags[2]: --tags
        named = next((o for o, f in _FIELDS.items() if f == path), None)
        if named is None:
            raise _UsageError(f"invalid {wrong or 'device'}: {message}") from None
        if "unknown field" in message:
            message = f"not an option for a {kind}"
        raise _UsageError(f"invalid {_OPTIONS[named]}: {message}") from None


def _import_rows(args: argparse.Namespace) -> list[Row]:
    source = args.file
    fmt = args.format or ("json" if source.lower().endswith(".json") else "csv")
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {source}: {exc.strerror}") from None
    return rows_from_json(raw) if fmt == "json" else rows_from_csv(raw)


async def _list(conn: psycopg.AsyncConnection[Any], args: argparse.Namespace) -> None:
    """Every device matching, page by page, one tab-separated line each."""
    after: tuple[DeviceKind, str] | None = None
    while True:
        where = DeviceFilter(args.kind, args.state, args.site, args.tag, after)
        found = await devices.page(conn, where, _PAGE)
        for d in found.devices:
            seen = d.last_seen_at.isoformat() if d.last_seen_at else "never seen"
            kind = "meter" if isinstance(d, MeterDevice) else "vehicle"
            print(
                "\t".join((kind, d.id, d.state, d.site or "", seen, " ".join(d.tags), d.name or ""))
            )
        if found.next_cursor is None:
            return
        last = found.devices[-1]
        after = ("meter" if isinstance(last, MeterDevice) else "vehicle", last.id)


def _describe(device: Device) -> str:
    """A device as ``field: value`` lines (the JSON the API answers, flattened)."""
    fields = msgspec.to_builtins(device)
    metadata = fields.pop("metadata")
    lines = [f"{key}: {_text(value)}" for key, value in fields.items()]
    lines += [f"{key}: {_text(value)}" for key, value in metadata.items()]
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return str(value)
