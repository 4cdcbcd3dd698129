"""A batch of received messages: what one database transaction writes and then acknowledges."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import NamedTuple

from gateway.dead_letter_cap import Suppressed
from gateway.reading_kinds import KINDS, MeterRow, VehicleRow
from gateway.readings import Decoded, Reject


class Received(NamedTuple):
    """One MQTT message as taken from the broker, decoded, with what is needed to ack it.
    (A named tuple: made for every message, at a quarter of a frozen dataclass's cost.)"""

    topic: str
    payload: bytes
    received_at: datetime
    received_monotonic: float
    mid: int
    qos: int
    connection: int  # which broker connection delivered it: acks go back only on that one
    decoded: Decoded
    suppressed: Suppressed | None = None  # its dead letters past the cap, counted

    @property
    def items(self) -> int:
        """What it costs to hold and write: its readings and its dead letters."""
        return len(self.decoded.readings) + len(self.decoded.rejects) + 1


DeadLetterRow = tuple[datetime, str, str | None, str | None, str, bytes, int]
# window start, device kind, device name, count, last received, sample reason, payload, its size
OverflowRow = tuple[datetime, str, str, int, datetime, str, bytes, int]


@dataclasses.dataclass(frozen=True, slots=True)
class BatchLimits:
    """When a batch is full: whichever bound is reached first (a batch may pass the items and
    bytes bounds by its last message)."""

    messages: int
    items: int
    payload_bytes: int


@dataclasses.dataclass(slots=True)
class Batch:
    """Messages gathered until the batch is full or old enough; flushed as one transaction."""

    messages: list[Received] = dataclasses.field(default_factory=list)
    started_monotonic: float = 0.0
    items: int = 0
    payload_bytes: int = 0

    def add(self, message: Received) -> None:
        if not self.messages:
            self.started_monotonic = time.monotonic()
        self.messages.append(message)
        self.items += message.items
        self.payload_bytes += len(message.payload)

    def __len__(self) -> int:
        return len(self.messages)

    def is_full(self, limits: BatchLimits) -> bool:
        return (
            len(self.messages) >= limits.messages
            or self.items >= limits.items
            or self.payload_bytes >= limits.payload_bytes
        )

    def age_s(self, now_monotonic: float) -> float:
        return now_monotonic - self.started_monotonic if self.messages else 0.0

    def split(self) -> list[Batch]:
        """One batch per message, to find the message the database refuses."""
        return [
            Batch([message], message.received_monotonic, message.items, len(message.payload))
            for message in self.messages
        ]

    def devices(self) -> tuple[list[str], list[str]]:
        """Names of the meters and of the vehicles whose readings the batch holds."""
        meters: set[str] = set()
        vehicles: set[str] = set()
        for message in self.messages:
            decoded = message.decoded
            if decoded.readings and decoded.device_id is not None:
                (meters if decoded.device_kind == "meter" else vehicles).add(decoded.device_id)
        return sorted(meters), sorted(vehicles)

    def rows(
        self, refused: Mapping[tuple[str, str], str] | None = None
    ) -> tuple[list[MeterRow], list[VehicleRow], list[DeadLetterRow], list[OverflowRow]]:
        """The batch's rows; a message of a device in ``refused`` ((kind, name) -> reason)
        becomes one dead letter with that reason instead of readings."""
        meters: list[MeterRow] = []
        vehicles: list[VehicleRow] = []
        dead: list[DeadLetterRow] = []
        overflow: dict[tuple[datetime, str, str], OverflowRow] = {}
        for message in self.messages:
            if message.suppressed is not None:
                _count_overflow(overflow, message.suppressed, message.received_at)
            decoded = message.decoded
            name = decoded.device_id
            reason = refused.get((decoded.device_kind or "", name or "")) if refused else None
            if reason is not None and decoded.readings:
                whole = Reject(
                    reason, message.payload, len(message.payload), decoded.device_kind, name
                )
                dead.append(_dead_letter_row(message, whole))
                continue
            if decoded.readings:
                # a reading always comes with its device
                assert name is not None
                assert decoded.device_kind is not None
                row = KINDS[decoded.device_kind].row
                rows = meters if decoded.device_kind == "meter" else vehicles
                for reading in decoded.readings:
                    rows.append(row(name, reading, message.received_at))
            dead.extend(_dead_letter_row(message, reject) for reject in decoded.rejects)
        return meters, vehicles, dead, sorted(overflow.values())  # in key order: no deadlock

    def reading_days(self) -> set[tuple[str, date]]:
        """(kind, UTC day) pairs the readings fall in: the partitions they need."""
        days: set[tuple[str, date]] = set()
        for message in self.messages:
            decoded = message.decoded
            for reading in decoded.readings:
                assert decoded.device_kind is not None  # a reading always comes with its device
                days.add((decoded.device_kind, reading.timestamp.astimezone(UTC).date()))
        return days


def _dead_letter_row(message: Received, reject: Reject) -> DeadLetterRow:
    return (
        message.received_at,
        message.topic,
        reject.device_kind,
        reject.device_id,
        reject.reason,
        reject.payload,
        reject.payload_bytes,
    )


def _count_overflow(
    rows: dict[tuple[datetime, str, str], OverflowRow], suppressed: Suppressed, at: datetime
) -> None:
    key = (suppressed.window_start, suppressed.device_kind, suppressed.device_name)
    row = rows.get(key)
    if row is None:
        sample = suppressed.sample
        rows[key] = (
            *key,
            suppressed.count,
            at,
            _storable(sample.reason),
            sample.payload,
            sample.payload_bytes,
        )
    else:
        rows[key] = (*key, row[3] + suppressed.count, max(row[4], at), *row[5:])


def refused_by_database(message: Received, error: str) -> Received:
    """The same message turned into a dead letter, when the database will not take its readings.
    Its text is made storable (PostgreSQL text cannot hold NUL), so the dead letter always is."""
    decoded = message.decoded
    reject = Reject(
        _storable(f"database refused the message: {error}"),
        message.payload,
        len(message.payload),
        decoded.device_kind,
        None if decoded.device_id is None else _storable(decoded.device_id),
    )
    refused = decoded._replace(readings=[], rejects=[reject])
    return message._replace(topic=_storable(message.topic), decoded=refused, suppressed=None)


def is_refusal(message: Received) -> bool:
    return not message.decoded.readings and any(
        reject.reason.startswith("database refused") for reject in message.decoded.rejects
    )


def _storable(text: str) -> str:
    return text.replace("\x00", "\\0")
