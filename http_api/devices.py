"""Device management, for the HTTP routes and the CLI alike: each operation on the registry, its
answer as the API gives it, and what can go wrong with it as an ApiError."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import psycopg
from msgspec import UNSET

from gateway import registry
from gateway.broker_logins import device_username
from gateway.readings import DeviceKind
from gateway.registry import DeviceRecord
from http_api.device_bodies import (
    Device,
    DeviceList,
    DeviceWithSecret,
    ImportedRow,
    ImportResult,
    MeterChange,
    NewDevice,
    VehicleChange,
    changes_of,
    device_of,
    record_of,
)
from http_api.device_import import Row, RowError
from http_api.errors import ConflictError, NotFoundError
from http_api.params import encode_cursor

Connection = psycopg.AsyncConnection[Any]
_ID_PARAMETER: Final = "id"


def _unknown(kind: DeviceKind, device_id: str) -> NotFoundError:
    return NotFoundError(f"no {kind} {device_id!r} is registered", _ID_PARAMETER)


async def create(conn: Connection, body: NewDevice) -> DeviceWithSecret:
    record = record_of(body)
    created = await registry.create(conn, record)
    if created is None:
        raise ConflictError(
            f"{record.kind} {record.device_id!r} is already registered: change it with PATCH "
            f"/v1/devices/{record.kind}/{record.device_id}, or import it",
            _ID_PARAMETER,
        )
    device, secret = created
    return DeviceWithSecret(
        device_of(device), device_username(device.kind, device.device_id), secret
    )


async def import_rows(conn: Connection, rows: Sequence[Row]) -> ImportResult:
    """Register the good rows in one transaction; the bad ones (and a device repeated after
    its first row) are named in the results."""
    results: dict[int, ImportedRow] = {}
    first_row: dict[tuple[str, str], int] = {}
    to_register: list[tuple[int, DeviceRecord]] = []
    for number, row in enumerate(rows, start=1):
        if isinstance(row, RowError):
            results[number] = ImportedRow(number, "error", column=row.column, message=row.message)
            continue
        record = record_of(row)
        key = (record.kind, record.device_id)
        if key in first_row:
            results[number] = ImportedRow(
                number,
                "error",
                kind=record.kind,
                id=record.device_id,
                column="id",
                message=f"the same device as row {first_row[key]}",
            )
            continue
        first_row[key] = number
        to_register.append((number, record))
    registered = await registry.register(conn, [record for _, record in to_register])
    for (number, record), done in zip(to_register, registered, strict=True):
        results[number] = ImportedRow(
            number,
            done.outcome,
            kind=record.kind,
            id=record.device_id,
            mqtt_username=device_username(record.kind, record.device_id),
            secret=UNSET if done.secret is None else done.secret,
        )
    ordered = [results[number] for number in sorted(results)]
    counts = Counter(result.status for result in ordered)
    return ImportResult(
        counts["created"], counts["updated"], counts["unchanged"], counts["error"], ordered
    )


async def find(conn: Connection, kind: DeviceKind, device_id: str) -> Device:
    device = await registry.find(conn, kind, device_id)
    if device is None:
        raise _unknown(kind, device_id)
    return device_of(device)


async def page(conn: Connection, where: registry.DeviceFilter, limit: int) -> DeviceList:
    rows = await registry.page(conn, where, limit + 1)  # one more: is there a next page
    shown = rows[:limit]
    cursor = None
    if len(rows) > limit:
        last = shown[-1]
        cursor = encode_cursor(msgspec.json.encode([last.kind, last.device_id]).decode())
    return DeviceList([device_of(row) for row in shown], cursor)


async def update(
    conn: Connection, kind: DeviceKind, device_id: str, body: MeterChange | VehicleChange
) -> Device:
    device = await registry.update(conn, kind, device_id, changes_of(body))
    if device is None:
        raise _unknown(kind, device_id)
    return device_of(device)


async def disable(conn: Connection, kind: DeviceKind, device_id: str) -> Device:
    """Disabled: its broker login stops working; its history, links and alerts are kept."""
    device = await registry.update(conn, kind, device_id, {"state": "disabled"})
    if device is None:
        raise _unknown(kind, device_id)
    return device_of(device)


async def rotate_secret(conn: Connection, kind: DeviceKind, device_id: str) -> DeviceWithSecret:
    secret = await registry.rotate_secret(conn, kind, device_id)
    if secret is None:
        raise _unknown(kind, device_id)
    device = await find(conn, kind, device_id)
    return DeviceWithSecret(device, device_username(kind, device_id), secret)


async def delete(conn: Connection, kind: DeviceKind, device_id: str) -> Device:
    """Delete a device that never reported and was never linked: the device as it was."""
    deleted = await registry.delete(conn, kind, device_id)
    if deleted == "unknown":
        raise _unknown(kind, device_id)
    if deleted == "has_history":
        raise ConflictError(
            f"{kind} {device_id!r} has history (readings or links), which is kept: disable it "
            f"instead (POST /v1/devices/{kind}/{device_id}/disable)",
            _ID_PARAMETER,
        )
    return device_of(deleted)
