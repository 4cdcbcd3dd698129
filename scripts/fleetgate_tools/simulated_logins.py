"""The simulated fleet in the registry, and the secrets its devices log in with: registration
as a bulk import does it, and a file of logins (username, secret) readable by its owner only."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import psycopg

from fleetgate_tools.simulated_fleet import Fleet
from gateway.broker_logins import device_username
from gateway.registry import register, rotate_secret
from gateway.schema import apply_schema

# A device logins file: a CSV file with these columns (others are ignored, so what
# `python -m http_api device import` prints is one too).
LOGIN_COLUMNS: Final = ("mqttUsername", "secret")


def read_device_logins(path: Path) -> dict[str, str]:
    """Username to secret, from a CSV file with the columns LOGIN_COLUMNS; rows without a
    secret are left out."""
    with path.open(newline="") as file:
        rows = csv.DictReader(file)
        if not set(LOGIN_COLUMNS) <= set(rows.fieldnames or ()):
            raise ValueError(f"{path} has no columns {','.join(LOGIN_COLUMNS)}")
        return {row["mqttUsername"]: row["secret"] for row in rows if row["secret"]}


def write_device_logins(path: Path, logins: Mapping[str, str]) -> None:
    """Replace the file whole (never half-written), readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.new")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(descriptor, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(LOGIN_COLUMNS)
        writer.writerows(sorted(logins.items()))
    partial.replace(path)


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    """What registering a fleet did: outcomes (created, updated, unchanged) and the secrets it
    gave out (username to secret), ``renewed`` of them in place of one nobody kept."""

    outcomes: Counter[str]
    secrets: dict[str, str]
    renewed: int = 0


def register_fleet(
    database_url: str, fleet: Fleet, kept: Mapping[str, str] | None = None
) -> Registration:
    """Register (or update) the fleet's devices in one transaction, as POST /v1/devices/import
    does, so that each meter is judged against its own nominal voltage. Without ``kept`` the
    secrets issued to new devices are not kept; with it (the secrets kept so far, by username),
    every device of the fleet that ``kept`` has no secret for gets a new one (its old one, if it
    had one, stops working), so that all of them can connect."""

    async def run() -> Registration:
        await apply_schema(database_url)
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            done = await register(conn, fleet.devices())
            outcomes: Counter[str] = Counter(d.outcome for d in done)
            if kept is None:
                return Registration(outcomes, {})
            issued = {
                device_username(d.record.kind, d.record.device_id): d.secret
                for d in done
                if d.secret
            }
            renewed = 0
            async with conn.transaction():
                for d in done:
                    username = device_username(d.record.kind, d.record.device_id)
                    if username not in issued and username not in kept:
                        secret = await rotate_secret(conn, d.record.kind, d.record.device_id)
                        if secret is not None:
                            issued[username] = secret
                            renewed += 1
            return Registration(outcomes, issued, renewed)

    return asyncio.run(run())
