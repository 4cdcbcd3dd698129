"""Brings a database to this version's schema: ``schema.sql`` for a new one, the numbered
migrations in ``gateway/migrations/`` it lacks for one made by an earlier version."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import psycopg

logger = logging.getLogger(__name__)

# "fleet": serialises schema changes across processes; 0.1.0 took the same lock.
_SCHEMA_LOCK: Final = 0x666C656574
_ATTEMPTS: Final = 5
# The version of a database made by fleetgate 0.1.0, which recorded no number (it kept the
# digests of the schema texts it applied in schema_applied); migrations number on from it.
RELEASE_0_1_0: Final = 1
_MIGRATION_NAME: Final = re.compile(r"\A(\d{4})_[a-z0-9_]+\.sql\Z")

_TABLES_PRESENT: Final = """
SELECT to_regclass('schema_migration') IS NOT NULL, to_regclass('schema_applied') IS NOT NULL,
       to_regclass('meter') IS NOT NULL"""
_RECORDED_VERSION: Final = "SELECT max(version) FROM schema_migration"
_RECORD_VERSION: Final = "INSERT INTO schema_migration (version, script) VALUES (%s, %s)"


class SchemaVersionError(Exception):
    """The database's schema is not one this version knows how to bring up to date."""


class SchemaRightsError(psycopg.errors.InsufficientPrivilege):
    """The database needs a schema change that this login may not make (a service's role):
    its owner runs ``python -m gateway migrate``. A database error, so that the callers that
    wait for the database or log a failed repair treat it as one."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step from the version before it: ``NNNN_what_it_does.sql``."""

    version: int
    script: str  # the file's name, as recorded
    sql: str


def schema_sql() -> str:
    return resources.files("gateway").joinpath("schema.sql").read_text(encoding="utf-8")


def migrations() -> list[Migration]:
    """The migrations, in order; numbered on from 0.1.0's version without a gap."""
    found = []
    for entry in resources.files("gateway").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise SchemaVersionError(f"migration {entry.name!r} is not named NNNN_what_it_does.sql")
        found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    numbers = [migration.version for migration in found]
    if numbers != list(range(RELEASE_0_1_0 + 1, RELEASE_0_1_0 + 1 + len(found))):
        raise SchemaVersionError(f"migrations numbered {numbers}: expected 2, 3, ... in turn")
    return found


def latest_version(steps: list[Migration]) -> int:
    return steps[-1].version if steps else RELEASE_0_1_0


async def apply_schema(conninfo: str, *, force: bool = False) -> int:
    """Bring the database to this version's schema, and return the version it is at: a new one
    (no fleetgate tables) gets ``schema.sql`` and is recorded at the latest version; an existing
    one gets each migration newer than its recorded version, in order, each in its own
    transaction with its record. ``force`` then applies ``schema.sql`` again, which creates only
    what is missing: the repair of a schema changed under us, such as a dropped table. Processes
    starting together take turns on an advisory lock; a database already up to date is only read
    (so a service's role, which may change nothing, starts), and a start never waits for a
    running writer's locks. A deadlock with a writer is retried. A change that this login may
    not make raises ``SchemaRightsError``."""
    steps = migrations()
    latest = latest_version(steps)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            version = await _recorded_version(conn)
            if version is not None and version > latest:
                logger.warning(
                    "schema: the database is at version %d, newer than this fleetgate knows"
                    " (%d); left as it is",
                    version,
                    latest,
                )
                return version
            try:
                await _migrate(conn, version, steps)
            except psycopg.errors.InsufficientPrivilege as exc:
                at = "has no fleetgate schema" if version is None else f"is at version {version}"
                situation = f"the database {at} and this fleetgate needs version {latest}, but"
                raise _rights_error(conn, situation, "migrate it", "migrate", exc) from exc
            if force:
                try:
                    await _transaction(conn, schema_sql(), None)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise _rights_error(
                        conn, "", "repair the schema", "migrate --repair", exc
                    ) from exc
            return latest
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


async def _migrate(
    conn: psycopg.AsyncConnection[Any], version: int | None, steps: list[Migration]
) -> None:
    """``schema.sql`` for a new database (``version`` None), else the migrations it lacks."""
    latest = latest_version(steps)
    if version is None:
        await _transaction(conn, schema_sql(), (latest, "schema.sql"))
        logger.info("schema: new database built at version %d", latest)
        return
    for step in steps:
        if step.version > version:
            await _transaction(conn, step.sql, (step.version, step.script))
            logger.info("schema: migrated to version %d (%s)", step.version, step.script)


def _rights_error(
    conn: psycopg.AsyncConnection[Any],
    situation: str,
    change: str,
    command: str,
    refusal: psycopg.errors.InsufficientPrivilege,
) -> SchemaRightsError:
    """One line: what the schema needs, who was refused and why, and who can do it instead."""
    reason = refusal.diag.message_primary or " ".join(str(refusal).split())
    refused = f"{situation} {conn.info.user!r}" if situation else repr(conn.info.user)
    return SchemaRightsError(
        f"{refused} may not {change} ({reason}): run `python -m gateway {command}` with the"
        " DATABASE_URL of the schema's owner (a member of fleetgate_owner) or of a superuser"
        " (docs/security.md)"
    )


async def _recorded_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The database's version, or None for a new database."""
    cur = await conn.execute(_TABLES_PRESENT)
    recorded, made_by_0_1_0, has_tables = await cur.fetchone() or (False, False, False)
    if recorded:
        cur = await conn.execute(_RECORDED_VERSION)
        row = await cur.fetchone()
        if row is None or row[0] is None:
            raise SchemaVersionError("schema_migration is empty: the schema's version is unknown")
        return int(row[0])
    if made_by_0_1_0:
        return RELEASE_0_1_0
    if has_tables:
        raise SchemaVersionError(
            "the database has fleetgate tables but no record of their version"
            " (neither schema_migration nor schema_applied)"
        )
    return None


async def _transaction(
    conn: psycopg.AsyncConnection[Any], sql: str, record: tuple[int, str] | None
) -> None:
    """Run ``sql`` (statements without parameters) and record the version it brings, at once."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(sql.encode())
                if record is not None:
                    await conn.execute(_RECORD_VERSION, record)
        except psycopg.errors.DeadlockDetected:
            if attempt == _ATTEMPTS:
                raise
            logger.warning("schema: deadlock with another session, trying again")
            await asyncio.sleep(0.2 * attempt)
        else:
            return
