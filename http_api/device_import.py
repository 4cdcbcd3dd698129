"""Reading a bulk import: a CSV file with a header row, or a JSON array of devices. Each row is
a device or the error that names its row and column; what is wrong with the body as a whole
(not CSV, an unknown column, too many rows) refuses it."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import Any, Final, TypeAlias

import msgspec

from gateway.readings import nesting_exceeds
from http_api.device_bodies import NewDevice, invalid_field
from http_api.errors import InvalidBodyError

MAX_ROWS: Final = 100_000
# CSV columns: the JSON fields, the metadata's flat beside them; tags separated by spaces.
DESCRIPTION_COLUMNS: Final = ("kind", "id", "name", "site", "tags", "state")
METADATA_COLUMNS: Final = ("nominalVoltageV", "phases", "batteryCapacityKwh")
CSV_COLUMNS: Final = (*DESCRIPTION_COLUMNS, *METADATA_COLUMNS)
_REQUIRED: Final = ("kind", "id")
# An array (1) of devices (2) whose metadata and tags nest once more (3).
_NESTING: Final = 3

_DEVICES: Final = msgspec.json.Decoder(list[msgspec.Raw])
_DEVICE: Final = msgspec.json.Decoder(NewDevice)


@dataclasses.dataclass(frozen=True, slots=True)
class RowError:
    row: int
    column: str | None  # None: the row as a whole
    message: str


Row: TypeAlias = NewDevice | RowError


def rows_from_json(raw: bytes) -> list[Row]:
    if nesting_exceeds(raw, _NESTING):
        raise InvalidBodyError(
            "invalid import: expected a JSON array of devices, nested at most 3 levels"
        )
    try:
        elements = _DEVICES.decode(raw)
    except msgspec.ValidationError:
        raise InvalidBodyError("invalid import: expected a JSON array of devices") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBodyError(f"malformed JSON: {exc}") from None
    _check_count(len(elements))
    rows: list[Row] = []
    for number, element in enumerate(elements, start=1):
        try:
            rows.append(_DEVICE.decode(element))
        except msgspec.ValidationError as exc:
            rows.append(RowError(number, *invalid_field(exc)))
    return rows


def rows_from_csv(raw: bytes) -> list[Row]:
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as spreadsheets write, is skipped
    except UnicodeDecodeError as exc:
        raise InvalidBodyError(f"malformed CSV: not UTF-8 ({exc})") from None
    records = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    try:
        header = [name.strip() for name in next(records, [])]
        _check_header(header)
        for cells in records:
            if not cells:
                continue  # a blank line
            _check_count(len(rows) + 1)
            rows.append(_csv_row(len(rows) + 1, header, cells))
    except csv.Error as exc:
        raise InvalidBodyError(f"malformed CSV at line {records.line_num}: {exc}") from None
    _check_count(len(rows))
    return rows


def _check_header(header: list[str]) -> None:
    if not any(header):
        raise InvalidBodyError("invalid import: the CSV has no header row")
    for name in header:
        if name not in CSV_COLUMNS:
            raise InvalidBodyError(
                f"unknown column {name[:80]!r}: the columns are {', '.join(CSV_COLUMNS)}",
                name[:80],
            )
        if header.count(name) > 1:
            raise InvalidBodyError(f"column {name!r} appears twice in the header", name)
    for name in _REQUIRED:
        if name not in header:
            raise InvalidBodyError(f"the CSV header has no column {name!r}", name)


def _check_count(rows: int) -> None:
    if rows == 0:
        raise InvalidBodyError("invalid import: no devices")
    if rows > MAX_ROWS:
        raise InvalidBodyError(f"invalid import: more than {MAX_ROWS:,} devices")


def _csv_row(number: int, header: list[str], cells: list[str]) -> Row:
    if len(cells) != len(header):
        return RowError(number, None, f"{len(cells)} cells; the header has {len(header)}")
    device: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, cell in zip(header, cells, strict=True):
        value = cell.strip()
        if not value:
            continue  # an empty cell: not given
        if name in METADATA_COLUMNS:
            metadata[name] = value
        else:
            device[name] = value.split() if name == "tags" else value
    if metadata:
        device["metadata"] = metadata
    try:
        # strict=False: numbers from their text ("400" for nominalVoltageV)
        converted: NewDevice = msgspec.convert(device, NewDevice, strict=False)
    except msgspec.ValidationError as exc:
        field, message = invalid_field(exc)
        column = _csv_column(field)
        if column in METADATA_COLUMNS and "unknown field" in message:
            message = f"a {device.get('kind')} has no {column}"
        return RowError(number, column, message)
    return converted


def _csv_column(field: str | None) -> str | None:
    """A field of the JSON shape as the CSV names it: metadata.phases is phases, tags[2] tags."""
    if field is None:
        return None
    return re.sub(r"\[\d+\]\Z", "", field.removeprefix("metadata."))
