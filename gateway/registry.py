"""The device registry's SQL: devices are the rows of ``meter`` and ``vehicle``, registered one
by one or thousands at once, listed, changed, given broker secrets and deleted. The HTTP API, its
CLI and the simulator all register through here, so every way in registers devices alike; the
gateway and HTTP ingestion ask here which devices closed enrolment refuses, so they refuse alike."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

import psycopg
from psycopg.rows import class_row

from gateway.broker_logins import hash_secret, new_secret
from gateway.readings import DeviceKind

DeviceState: TypeAlias = Literal["active", "disabled"]
Outcome: TypeAlias = Literal["created", "updated", "unchanged"]
KINDS: Final[tuple[DeviceKind, ...]] = ("meter", "vehicle")
STATES: Final[tuple[DeviceState, ...]] = ("active", "disabled")
# Kind-specific metadata: its columns and their types.
METADATA: Final[dict[str, tuple[str, ...]]] = {
    "meter": ("nominal_voltage_v", "phases"),
    "vehicle": ("battery_capacity_kwh",),
}
_TYPES: Final = {"nominal_voltage_v": "float8", "phases": "int2", "battery_capacity_kwh": "float8"}
# What an update may change, besides the metadata of the kind.
_DESCRIPTION: Final = ("display_name", "site", "tags", "state")
_ATTEMPTS: Final = 3  # a bulk registration that deadlocks with the gateway's live rows retries


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as an operator describes it; ``state`` None: active when it is created, left
    as it is when it exists. Tags never contain whitespace (the callers check them)."""

    kind: DeviceKind
    device_id: str
    name: str | None = None
    site: str | None = None
    tags: tuple[str, ...] = ()
    state: DeviceState | None = None
    nominal_voltage_v: float | None = None  # meters
    phases: int | None = None  # meters: 1 or 3
    battery_capacity_kwh: float | None = None  # vehicles


@dataclasses.dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """A device as the registry holds it: never its secret, only whether it has one."""

    kind: DeviceKind
    device_id: str
    name: str | None
    site: str | None
    tags: list[str]
    state: DeviceState
    created_at: datetime
    last_seen_at: datetime | None
    has_secret: bool
    nominal_voltage_v: float | None
    phases: int | None
    battery_capacity_kwh: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    """What a bulk registration did to one record; ``secret`` when it issued one (shown once)."""

    record: DeviceRecord
    outcome: Outcome
    secret: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why closed enrolment refuses a device's readings: it is not registered (``state``
    None), or registered but not active."""

    kind: DeviceKind
    device_id: str
    state: DeviceState | None

    @property
    def reason(self) -> str:
        """The dead letter's reason, as the gateway stores it."""
        shown = "not registered" if self.state is None else self.state
        return f"unknown device: {self.kind} {self.device_id!r} is {shown}"


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceFilter:
    kind: DeviceKind | None = None
    state: DeviceState | None = None
    site: str | None = None
    tag: str | None = None
    after: tuple[DeviceKind, str] | None = None  # the keyset: (kind, id) of the previous page


def _columns(kind: str) -> str:
    metadata = ", ".join(
        column if column in METADATA[kind] else f"NULL::{_TYPES[column]} AS {column}"
        for column in _TYPES
    )
    return f"""'{kind}' AS kind, name AS device_id, display_name AS name, site, tags, state,
        created_at, received_at AS last_seen_at, secret_hash IS NOT NULL AS has_secret,
        {metadata}"""


def _given(kind: str) -> str:
    """The records of one kind as rows ``g``, one array parameter per column."""
    arrays = ", ".join(f"%({c})s::{_TYPES[c]}[]" for c in METADATA[kind])
    return f"""unnest(%(names)s::text[], %(display_names)s::text[], %(sites)s::text[],
                  %(tags)s::text[], %(states)s::text[], %(secret_hashes)s::text[], {arrays})
        AS g(name, display_name, site, tags, state, secret_hash, {", ".join(METADATA[kind])})"""


def _set_if_named(column: str) -> str:
    cast = "text[]" if column == "tags" else _TYPES.get(column, "text")
    return f"{column} = CASE WHEN %(set_{column})s THEN %({column})s::{cast} ELSE {column} END"


# The registry's state of the named devices (absent: not registered).
_STATES: Final = b"""
SELECT 'meter', name, state FROM meter WHERE name = ANY(%s)
UNION ALL
SELECT 'vehicle', name, state FROM vehicle WHERE name = ANY(%s)
"""
_FIND: Final = {kind: f"SELECT {_columns(kind)} FROM {kind} WHERE name = %s" for kind in KINDS}
_CREATE: Final = {
    kind: f"""
    INSERT INTO {kind} (name, display_name, site, tags, state, secret_hash,
                        {", ".join(METADATA[kind])})
    VALUES (%s, %s, %s, %s, %s, %s, {", ".join(["%s"] * len(METADATA[kind]))})
    ON CONFLICT (name) DO NOTHING
    RETURNING {_columns(kind)}"""
    for kind in KINDS
}
_FILTER: Final = """
    (%(kind)s::text IS NULL OR %(kind)s = '{kind}')
    AND (%(state)s::text IS NULL OR state = %(state)s)
    AND (%(site)s::text IS NULL OR site = %(site)s)
    AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
    AND (%(after_kind)s::text IS NULL OR %(after_kind)s < '{kind}'
         OR (%(after_kind)s = '{kind}' AND name > %(after_id)s))"""
# Ordered by kind, then id: each kind's part reads its name index from the cursor on.
_PAGE: Final = f"""
SELECT * FROM (
    (SELECT {_columns("meter")} FROM meter WHERE {_FILTER.format(kind="meter")}
     ORDER BY name LIMIT %(limit)s)
    UNION ALL
    (SELECT {_columns("vehicle")} FROM vehicle WHERE {_FILTER.format(kind="vehicle")}
     ORDER BY name LIMIT %(limit)s)
) d ORDER BY kind, device_id LIMIT %(limit)s"""
# Bulk registration, per kind: which records already have a login (no secret to make), then the
# new devices (WHERE NOT EXISTS: ON CONFLICT alone would draw an identity value for each one
# that exists), then the existing devices that differ. After the insert every record's row
# exists (one inserted meanwhile, by the gateway's first reading, has been waited for), so the
# update sees them all: a record is created, updated or already so, never lost in a race.
_HAVE_SECRET: Final = {
    kind: f"SELECT name FROM {kind} WHERE name = ANY(%s) AND secret_hash IS NOT NULL"
    for kind in KINDS
}
_INSERT_NEW: Final = {
    kind: f"""
    INSERT INTO {kind} (name, display_name, site, tags, state, secret_hash,
                        {", ".join(METADATA[kind])})
    SELECT g.name, g.display_name, g.site, string_to_array(g.tags, ' '),
           coalesce(g.state, 'active'), g.secret_hash, {", ".join(f"g.{c}" for c in METADATA[kind])}
    FROM {_given(kind)}
    WHERE NOT EXISTS (SELECT 1 FROM {kind} d WHERE d.name = g.name)
    ORDER BY g.name
    ON CONFLICT (name) DO NOTHING
    RETURNING name"""
    for kind in KINDS
}
_UPDATE_CHANGED: Final = {
    kind: f"""
    UPDATE {kind} d
    SET display_name = g.display_name, site = g.site, tags = string_to_array(g.tags, ' '),
        state = coalesce(g.state, d.state), secret_hash = coalesce(d.secret_hash, g.secret_hash),
        {", ".join(f"{c} = g.{c}" for c in METADATA[kind])}
    FROM {_given(kind)}
    WHERE d.name = g.name
      AND ((d.display_name, d.site, d.tags, {", ".join(f"d.{c}" for c in METADATA[kind])})
           IS DISTINCT FROM (g.display_name, g.site, string_to_array(g.tags, ' '),
                             {", ".join(f"g.{c}" for c in METADATA[kind])})
           OR d.state <> coalesce(g.state, d.state)
           OR (d.secret_hash IS NULL AND g.secret_hash IS NOT NULL))
    RETURNING d.name, d.secret_hash"""
    for kind in KINDS
}
# One statement for any change: each column is set only if the change names it.
_UPDATE: Final = {
    kind: f"""
    UPDATE {kind} SET {", ".join(_set_if_named(c) for c in (*_DESCRIPTION, *METADATA[kind]))}
    WHERE name = %(device_id)s
    RETURNING {_columns(kind)}"""
    for kind in KINDS
}
_SET_SECRET: Final = {
    kind: f"UPDATE {kind} SET secret_hash = %s WHERE name = %s RETURNING name" for kind in KINDS
}
# History is readings (received_at is set by the first one) and links. A link made meanwhile
# fails the foreign key instead (ForeignKeyViolation): has_history too.
_DELETE_UNUSED: Final = {
    kind: f"""
    DELETE FROM {kind} d
    WHERE d.name = %s AND d.received_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM {kind}_reading r WHERE r.{kind}_id = d.{kind}_id)
      AND NOT EXISTS (SELECT 1 FROM vehicle_link l WHERE l.{kind}_id = d.{kind}_id)
    RETURNING {_columns(kind)}"""
    for kind in KINDS
}


def _tags_text(tags: Iterable[str]) -> str:
    joined = " ".join(tags)
    if any(not tag or tag.split() != [tag] for tag in tags):
        raise ValueError(f"tags must be non-empty and without whitespace: {joined!r}")
    return joined


async def find(
    conn: psycopg.AsyncConnection[Any], kind: DeviceKind, device_id: str
) -> RegisteredDevice | None:
    async with conn.cursor(row_factory=class_row(RegisteredDevice)) as cur:
        await cur.execute(_FIND[kind].encode(), (device_id,))
        return await cur.fetchone()


async def refusals(
    conn: psycopg.AsyncConnection[Any], meters: Sequence[str], vehicles: Sequence[str]
) -> dict[tuple[DeviceKind, str], Refusal]:
    """The named devices that closed enrolment refuses (not registered, or not active), in one
    statement; a device that may report is absent."""
    if not meters and not vehicles:
        return {}
    cur = await conn.execute(_STATES, (list(meters), list(vehicles)))
    states: dict[tuple[str, str], DeviceState] = {(k, n): s for k, n, s in await cur.fetchall()}
    named: tuple[tuple[DeviceKind, Sequence[str]], ...] = (("meter", meters), ("vehicle", vehicles))
    refused: dict[tuple[DeviceKind, str], Refusal] = {}
    for kind, names in named:
        for name in names:
            state = states.get((kind, name))
            if state != "active":
                refused[kind, name] = Refusal(kind, name, state)
    return refused


async def page(
    conn: psycopg.AsyncConnection[Any], where: DeviceFilter, limit: int
) -> list[RegisteredDevice]:
    """Up to ``limit`` devices after ``where.after``, by kind and then id."""
    after_kind, after_id = where.after or (None, None)
    params = {
        "kind": where.kind,
        "state": where.state,
        "site": where.site,
        "tag": where.tag,
        "after_kind": after_kind,
        "after_id": after_id,
        "limit": limit,
    }
    async with conn.cursor(row_factory=class_row(RegisteredDevice)) as cur:
        await cur.execute(_PAGE.encode(), params)
        return await cur.fetchall()


async def create(
    conn: psycopg.AsyncConnection[Any], record: DeviceRecord
) -> tuple[RegisteredDevice, str] | None:
    """Register a new device with a new secret: the device and the secret (shown once); None
    if the device exists."""
    secret = new_secret()
    metadata = [getattr(record, column) for column in METADATA[record.kind]]
    values = (
        record.device_id,
        record.name,
        record.site,
        list(record.tags),
        record.state or "active",
        hash_secret(secret),
        *metadata,
    )
    async with conn.cursor(row_factory=class_row(RegisteredDevice)) as cur:
        await cur.execute(_CREATE[record.kind].encode(), values)
        created = await cur.fetchone()
    return None if created is None else (created, secret)


async def register(
    conn: psycopg.AsyncConnection[Any], records: Sequence[DeviceRecord]
) -> list[Registered]:
    """Register or update many devices in one transaction (kinds and ids unique), a few
    statements in all; a new device, or one without a login, gets a secret. Committed."""
    for attempt in range(_ATTEMPTS):
        try:
            async with conn.transaction():
                outcomes: dict[tuple[str, str], tuple[Outcome, str | None]] = {}
                for kind in KINDS:
                    of_kind = [r for r in records if r.kind == kind]
                    if of_kind:
                        outcomes.update(await _register_kind(conn, kind, of_kind))
            break
        except psycopg.errors.DeadlockDetected:
            if attempt == _ATTEMPTS - 1:
                raise
    return [
        Registered(record, *outcomes.get((record.kind, record.device_id), ("unchanged", None)))
        for record in records
    ]


async def _register_kind(
    conn: psycopg.AsyncConnection[Any], kind: DeviceKind, records: list[DeviceRecord]
) -> dict[tuple[str, str], tuple[Outcome, str | None]]:
    names = [r.device_id for r in records]
    cur = await conn.execute(_HAVE_SECRET[kind].encode(), (names,))
    have_secret = {name for (name,) in await cur.fetchall()}
    secrets = {name: new_secret() for name in names if name not in have_secret}
    # ~70 µs each (0.7 s for 10,000), in a thread: PBKDF2 releases the GIL, the loop goes on
    hashes = await asyncio.to_thread(_hashes, secrets)
    params: dict[str, Any] = {
        "names": names,
        "display_names": [r.name for r in records],
        "sites": [r.site for r in records],
        "tags": [_tags_text(r.tags) for r in records],
        "states": [r.state for r in records],
        "secret_hashes": [hashes.get(name) for name in names],
        **{column: [getattr(r, column) for r in records] for column in METADATA[kind]},
    }
    outcomes: dict[tuple[str, str], tuple[Outcome, str | None]] = {}
    cur = await conn.execute(_INSERT_NEW[kind].encode(), params)
    for (name,) in await cur.fetchall():
        outcomes[kind, name] = ("created", secrets[name])
    cur = await conn.execute(_UPDATE_CHANGED[kind].encode(), params)
    for name, stored_hash in await cur.fetchall():
        issued = stored_hash is not None and stored_hash == hashes.get(name)
        outcomes[kind, name] = ("updated", secrets[name] if issued else None)
    return outcomes


def _hashes(secrets: Mapping[str, str]) -> dict[str, str]:
    return {name: hash_secret(secret) for name, secret in secrets.items()}


async def update(
    conn: psycopg.AsyncConnection[Any],
    kind: DeviceKind,
    device_id: str,
    changes: Mapping[str, Any],
) -> RegisteredDevice | None:
    """Set the columns in ``changes`` (description, state, the kind's metadata); the device
    as it is then, or None if it does not exist."""
    allowed = (*_DESCRIPTION, *METADATA[kind])
    unknown = set(changes) - set(allowed)
    if unknown:
        raise ValueError(f"a {kind} has no changeable column {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {"device_id": device_id}
    for column in allowed:
        params[column] = changes.get(column)
        params[f"set_{column}"] = column in changes
    async with conn.cursor(row_factory=class_row(RegisteredDevice)) as cur:
        await cur.execute(_UPDATE[kind].encode(), params)
        return await cur.fetchone()


async def rotate_secret(
    conn: psycopg.AsyncConnection[Any], kind: DeviceKind, device_id: str
) -> str | None:
    """Give the device a new secret (the old one stops working): the secret, shown once; None
    if the device does not exist."""
    secret = new_secret()
    cur = await conn.execute(_SET_SECRET[kind].encode(), (hash_secret(secret), device_id))
    return secret if await cur.fetchone() is not None else None


async def delete(
    conn: psycopg.AsyncConnection[Any], kind: DeviceKind, device_id: str
) -> RegisteredDevice | Literal["has_history", "unknown"]:
    """Delete a device that has no history (no reading, no link): the device as it was. One
    with history is kept (disable it instead)."""
    try:
        async with (
            conn.transaction(),
            conn.cursor(row_factory=class_row(RegisteredDevice)) as cur,
        ):
            await cur.execute(_DELETE_UNUSED[kind].encode(), (device_id,))
            deleted = await cur.fetchone()
    except psycopg.errors.ForeignKeyViolation:
        return "has_history"
    if deleted is not None:
        return deleted
    return "has_history" if await find(conn, kind, device_id) is not None else "unknown"
