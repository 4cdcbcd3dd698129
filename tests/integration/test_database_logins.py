"""``python -m gateway migrate`` with DATABASE_LOGINS makes the services' logins (what
docker-compose.yml's migrate service does): each a member of its group role only, its password
the one the environment gives, reset when that changes; a superuser is never made one."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.services import PROJECT, Postgres
from tests.support import count, query

_MEMBERSHIPS = """
SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s ORDER BY 1"""
_LOGIN = (
    "SELECT rolcanlogin, rolsuper, rolcreaterole, rolpassword FROM pg_authid WHERE rolname = %s"
)


async def migrate(database_url: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "migrate",
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": database_url, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (pg_authid.rolpassword) is that of ``password``: the
    test server trusts every login, so a password is checked here instead of by logging in."""
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(key) for key in keys.split(":"))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return (
        method == "SCRAM-SHA-256"
        and hashlib.sha256(client_key).digest() == stored_key
        and hmac.digest(salted, b"Server Key", "sha256") == server_key
    )


@pytest.fixture
def names(postgres: Postgres) -> Iterator[list[str]]:
    """Unique login names for this test (roles are the server's); dropped at the end."""
    made = [f"{kind}_{uuid.uuid4().hex[:8]}" for kind in ("gateway", "api", "grafana")]
    yield made
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP ROLE IF EXISTS {name}".encode())


async def test_migrate_makes_each_login_a_member_of_its_role_with_the_password_given(
    database_url: str, names: list[str]
) -> None:
    gateway, api, grafana = names
    logins = (
        f"{gateway}:fleetgate_gateway:GATEWAY_DB_PASSWORD "
        f"{api}:fleetgate_api:API_DB_PASSWORD {grafana}:fleetgate_readonly:READONLY_DB_PASSWORD"
    )
    passwords = {
        "GATEWAY_DB_PASSWORD": "g-1",
        "API_DB_PASSWORD": "a-1",
        "READONLY_DB_PASSWORD": "r-1",
    }
    status, out, err = await migrate(database_url, DATABASE_LOGINS=logins, **passwords)
    assert status == 0, err
    assert f"login {api}, a member of fleetgate_api: password set" in out
    assert "a-1" not in out + err
    for name, group, password in (
        (gateway, "fleetgate_gateway", "g-1"),
        (api, "fleetgate_api", "a-1"),
        (grafana, "fleetgate_readonly", "r-1"),
    ):
        assert await query(database_url, _MEMBERSHIPS, name) == [(group,)]
        [(can_login, superuser, createrole, verifier)] = await query(database_url, _LOGIN, name)
        assert (can_login, superuser, createrole) == (True, False, False)
        assert scram_matches(verifier, password), name
    # The logins work as their roles: the gateway's reads the registry, and may not drop it.
    gateway_url = database_url.replace("://postgres@", f"://{gateway}:g-1@", 1)
    assert await query(gateway_url, "SELECT count(*) FROM meter") == [(0,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await query(gateway_url, "DROP TABLE meter")

    # Run again, with a new password for the API: it is reset, nothing else changes.
    rotated = {**passwords, "API_DB_PASSWORD": "a-2"}
    status, _, err = await migrate(database_url, DATABASE_LOGINS=logins, **rotated)
    assert status == 0, err
    [(_, _, _, verifier)] = await query(database_url, _LOGIN, api)
    assert scram_matches(verifier, "a-2")
    assert not scram_matches(verifier, "a-1")
    assert await query(database_url, _MEMBERSHIPS, api) == [("fleetgate_api",)]


async def test_a_bad_entry_or_a_missing_password_is_refused_before_anything_changes(
    database_url: str, names: list[str]
) -> None:
    gateway = names[0]
    for logins, env, said in (
        (f"{gateway}:fleetgate_gateway:GATEWAY_DB_PASSWORD", {}, "GATEWAY_DB_PASSWORD"),
        (f"{gateway}:fleetgate_gateway", {}, "is not login:group:VARIABLE"),
        (f"{gateway}:pg_read_all_data:P", {"P": "x"}, "the group is one of"),
        ("fleetgate_api:fleetgate_api:P", {"P": "x"}, "not a group role"),
    ):
        status, _, err = await migrate(database_url, DATABASE_LOGINS=logins, **env)
        assert (status, said in err) == (2, True), (logins, err)
    assert await count(database_url, "SELECT count(*) FROM pg_class WHERE relname = 'meter'") == 0
    assert (
        await count(database_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s", gateway) == 0
    )


async def test_a_superuser_or_a_login_of_two_groups_is_not_made_a_services_login(
    database_url: str, names: list[str]
) -> None:
    status, _, err = await migrate(
        database_url, DATABASE_LOGINS="postgres:fleetgate_gateway:P", P="oops"
    )
    assert status == 1
    assert "postgres is a superuser or the login migrate runs as" in err
    assert await query(database_url, _MEMBERSHIPS, "postgres") == []

    api = names[1]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"CREATE ROLE {api} LOGIN IN ROLE fleetgate_owner".encode())
    status, _, err = await migrate(database_url, DATABASE_LOGINS=f"{api}:fleetgate_api:P", P="x")
    assert status == 1
    assert f"REVOKE fleetgate_owner FROM {api}" in err
    assert await query(database_url, _MEMBERSHIPS, api) == [("fleetgate_owner",)]
