"""The services' database logins, made or reset by ``python -m gateway migrate`` from
DATABASE_LOGINS: each a member of one fleetgate group role (docs/security.md), its password taken
from the environment and sent to the server only as a SCRAM verifier."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg import sql

from gateway.env_options import Option, SettingsError

GROUP_ROLES: Final = ("fleetgate_owner", "fleetgate_gateway", "fleetgate_api", "fleetgate_readonly")
_LOGIN_NAME: Final = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")  # needs no quoting in a URL or SQL
_VARIABLE: Final = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
# What stops a login from being (re)made as a service's: a superuser or the migrator itself
# must not be demoted by a typo, and a login in a second fleetgate group would have more
# rights than its service needs.
_STANDING: Final = """
SELECT r.rolsuper, r.rolname = current_user,
       ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid AND g.rolname = ANY(%s) ORDER BY 1)
FROM pg_roles r WHERE r.rolname = %s"""


class DatabaseLoginError(Exception):
    """A login of DATABASE_LOGINS that migrate may not make into a service's login."""


@dataclasses.dataclass(frozen=True, slots=True)
class LoginSpec:
    """``login:group:VARIABLE``: the login, its group role, the variable holding its password."""

    name: str
    group: str
    password_variable: str


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseLogin:
    name: str
    group: str
    password: str = dataclasses.field(repr=False)


def parse_login_specs(text: str) -> tuple[LoginSpec, ...]:
    """Entries ``login:group:VARIABLE`` separated by whitespace; ValueError naming a bad one."""
    specs: list[LoginSpec] = []
    for entry in text.split():
        try:
            name, group, variable = entry.split(":")
        except ValueError:
            raise ValueError(f"{entry!r} is not login:group:VARIABLE") from None
        if not _LOGIN_NAME.match(name) or name in GROUP_ROLES:
            raise ValueError(f"{entry!r}: a login is [a-z_][a-z0-9_]*, and not a group role")
        if group not in GROUP_ROLES:
            raise ValueError(f"{entry!r}: the group is one of {', '.join(GROUP_ROLES)}")
        if not _VARIABLE.match(variable):
            raise ValueError(f"{entry!r}: {variable!r} is not an environment variable's name")
        if name in {spec.name for spec in specs}:
            raise ValueError(f"{entry!r}: login {name} is named twice")
        specs.append(LoginSpec(name, group, variable))
    return tuple(specs)


DATABASE_LOGINS_OPTION: Final = Option(
    "DATABASE_LOGINS",
    "database_logins",
    "",
    "migrate: the services' logins to create, or whose password to reset, once the schema is "
    "current, as login:group:ENV_VAR_WITH_ITS_PASSWORD separated by spaces (e.g. "
    "gateway:fleetgate_gateway:GATEWAY_DB_PASSWORD); each becomes a member of its group role. "
    "Takes a superuser or a CREATEROLE login.",
    parse_login_specs,
)


def logins_of(specs: tuple[LoginSpec, ...], environ: Mapping[str, str]) -> list[DatabaseLogin]:
    """The logins with their passwords; SettingsError naming an entry whose variable is empty."""
    logins = []
    for spec in specs:
        password = environ.get(spec.password_variable, "")
        if not password:
            raise SettingsError(
                f"DATABASE_LOGINS: ${spec.password_variable}, the password of {spec.name}, is unset"
            )
        logins.append(DatabaseLogin(spec.name, spec.group, password))
    return logins


async def ensure_logins(conninfo: str, logins: list[DatabaseLogin]) -> None:
    """Create each login as a member of its group with its password, or reset the password and
    membership of one that exists; each in a transaction of its own."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SHOW password_encryption")
        row = await cur.fetchone()
        algorithm = str(row[0]) if row else "scram-sha-256"
        for login in logins:
            await _ensure(conn, login, algorithm)


async def _ensure(conn: psycopg.AsyncConnection[Any], login: DatabaseLogin, algorithm: str) -> None:
    cur = await conn.execute(_STANDING, (list(GROUP_ROLES), login.name))
    standing = await cur.fetchone()
    if standing is not None:
        superuser, is_migrator, groups = standing
        if superuser or is_migrator:
            raise DatabaseLoginError(
                f"{login.name} is a superuser or the login migrate runs as: not made a member of"
                f" {login.group}, its password left as it is"
            )
        others = [group for group in groups if group != login.group]
        if others:
            raise DatabaseLoginError(
                f"{login.name} is also a member of {', '.join(others)}, more than"
                f" {login.group} needs: REVOKE {', '.join(others)} FROM {login.name}; first"
            )
    # The verifier, not the password, reaches the server (and any statement log).
    verifier = conn.pgconn.encrypt_password(
        login.password.encode(), login.name.encode(), algorithm.encode()
    )
    name, group = sql.Identifier(login.name), sql.Identifier(login.group)
    password = sql.Literal(verifier.decode())
    async with conn.transaction():
        if standing is None:
            await conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(name, password, group)
            )
        else:
            await conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(name, password))
            if login.group not in standing[2]:
                await conn.execute(sql.SQL("GRANT {} TO {}").format(group, name))
