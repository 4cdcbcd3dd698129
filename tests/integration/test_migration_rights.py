"""Who migrates (docs/security.md): services connected with their own roles wait, saying so,
until the owner runs ``python -m gateway migrate``; a migrator without CREATEROLE migrates where
the roles exist, and is told what to do where they do not."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid

import psycopg
import pytest

from gateway.schema import SchemaRightsError, apply_schema, latest_version, migrations
from gateway.settings import Settings
from http_api.startup import wait_for_database
from tests.integration.test_migrations import build_0_1_0, catalog
from tests.services import PROJECT, Postgres
from tests.support import LoginAs, RunningGateway, query, wait_until

_OWNERS = """
SELECT DISTINCT relowner::regrole::text FROM pg_class
WHERE relnamespace = current_schema()::regnamespace
"""


def new_database(server_url: str, owner: str = "postgres") -> str:
    name = f"r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}".encode())
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def group_roles(postgres: Postgres) -> None:
    """The group roles exist on the server: the schema, applied by the superuser, made them."""
    await apply_schema(new_database(postgres.url))


async def migrate(database_url: str) -> tuple[int, str, str]:
    """``python -m gateway migrate`` with that DATABASE_URL: status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "migrate",
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.usefixtures("group_roles")
async def test_services_with_their_roles_wait_for_the_owner_to_run_migrate(
    database_url: str, settings: Settings, login_as: LoginAs, caplog: pytest.LogCaptureFixture
) -> None:
    await build_0_1_0(database_url)  # an upgrade: the database is at version 1
    gateway_url = login_as(database_url, "fleetgate_gateway")
    api_url = login_as(database_url, "fleetgate_api")
    gateway = RunningGateway(settings.replace(database_url=gateway_url))
    stop_api = asyncio.Event()
    api_waiting = asyncio.create_task(wait_for_database(api_url, stop_api))
    try:

        async def told(logger: str) -> bool:
            return any(
                r.name == logger and r.levelno == logging.ERROR and "gateway migrate" in r.message
                for r in caplog.records
            )

        await wait_until(lambda: told("gateway.service"), what="the gateway's error")
        await wait_until(lambda: told("http_api.startup"), what="the API's error")
        assert not api_waiting.done()
        assert not gateway.gateway.subscribed.is_set()

        status, _, error = await migrate(gateway_url)
        assert status == 1
        user = gateway_url.split("//")[1].split(":")[0]
        assert error.splitlines() == [
            f"fleetgate: migrate failed: the database is at version 1 and this fleetgate needs"
            f" version {latest_version(migrations())}, but {user!r} may not migrate it"
            " (permission denied for schema public): run `python -m gateway migrate` with the"
            " DATABASE_URL of the schema's owner (a member of fleetgate_owner) or of a superuser"
            " (docs/security.md)"
        ]
        status, out, error = await migrate(database_url)  # the superuser
        latest = latest_version(migrations())
        assert (status, out) == (0, f"fleetgate: the schema is at version {latest}\n"), error

        await gateway.started()
        assert await asyncio.wait_for(api_waiting, 30) is True
    finally:
        stop_api.set()
        await api_waiting
        await gateway.close()


async def test_a_member_of_the_owner_without_createrole_migrates_where_the_roles_exist(
    postgres: Postgres, group_roles: None, login_as: LoginAs
) -> None:
    """An application login that owns its database and the tables of fleetgate 0.1.0, made a
    member of fleetgate_owner by an administrator: it migrates, and hands everything over."""
    migrator_url = login_as(new_database(postgres.url, owner="postgres"), "fleetgate_owner")
    migrator = migrator_url.split("//")[1].split(":")[0]
    own_database = new_database(postgres.url, owner=migrator).rsplit("/", 1)[1]
    own_url = migrator_url.rsplit("/", 1)[0] + "/" + own_database
    await build_0_1_0(own_url)
    assert await query(own_url, _OWNERS) == [(migrator,)]
    await apply_schema(own_url)
    assert await query(own_url, _OWNERS) == [("fleetgate_owner",)]
    by_superuser = new_database(postgres.url)
    await apply_schema(by_superuser)
    migrated, built = await catalog(own_url), await catalog(by_superuser)
    for found in (migrated, built):  # the database's own owner differs, rightly
        found["privileges"] = {row for row in found["privileges"] if row[0] != "database"}
    assert migrated == built


async def test_without_the_roles_a_migrator_needs_createrole() -> None:
    """On a server without the roles (a private one), a migrator that may not create roles is
    told so and changes nothing; with CREATEROLE it creates them and becomes the owner's
    member."""
    server = Postgres()
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(b"CREATE ROLE migrator LOGIN")
        url = new_database(server.url, owner="migrator").replace("://postgres@", "://migrator@")
        with pytest.raises(SchemaRightsError) as refused:
            await apply_schema(url)
        assert "(role fleetgate_owner does not exist, and migrator may not create roles)" in str(
            refused.value
        )
        assert await query(url, "SELECT to_regclass('meter')") == [(None,)]
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(b"ALTER ROLE migrator CREATEROLE")
        await apply_schema(url)
        assert await query(url, _OWNERS) == [("fleetgate_owner",)]
        assert await query(
            url,
            "SELECT rolname, pg_has_role('migrator', oid, 'MEMBER') FROM pg_roles"
            " WHERE starts_with(rolname, 'fleetgate_') ORDER BY rolname",
        ) == [
            ("fleetgate_api", False),
            ("fleetgate_gateway", False),
            ("fleetgate_owner", True),
            ("fleetgate_readonly", False),
        ]
    finally:
        server.close()
