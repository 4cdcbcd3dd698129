"""``python -m http_api token create|list|revoke``: the API's bearer tokens, stored hashed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from typing import Any, Final

import psycopg

from gateway.database import apply_schema
from http_api.auth import SCOPES, hash_token, new_token
from http_api.settings import Settings
from http_api.startup import one_line

_CREATE: Final = """
INSERT INTO api_token (name, scope, token_hash) VALUES (%s, %s, %s) RETURNING token_id
"""
_REVOKE: Final = """
UPDATE api_token SET revoked_at = now() WHERE token_id = %s AND revoked_at IS NULL
RETURNING token_id
"""
_LIST: Final = """
SELECT token_id, scope, name, created_at, revoked_at FROM api_token ORDER BY token_id
"""


async def create_token(database_url: str, scope: str, name: str = "") -> tuple[int, str]:
    """A new token of ``scope``: its id and the token itself (never stored, shown once)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    await apply_schema(database_url)
    token = new_token()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(_CREATE, (name, scope, hash_token(token)))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), token


async def revoke_token(database_url: str, token_id: int) -> bool:
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(_REVOKE, (token_id,))
        return await cur.fetchone() is not None


async def list_tokens(
    database_url: str,
) -> list[tuple[int, str, str, datetime, datetime | None]]:
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(_LIST)
        return await cur.fetchall()


def add_token_commands(commands: Any) -> None:
    """The ``token`` command, on the subparsers of ``python -m http_api``."""
    token = commands.add_parser("token", help="create, list or revoke bearer tokens")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument(
        "--scope",
        choices=SCOPES,
        required=True,
        help="read; write (also reads); admin (also writes, and manages devices)",
    )
    create.add_argument("--name", default="", help="whose token, for 'token list'")
    revoke = actions.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", type=int)
    actions.add_parser("list", help="list tokens (never the tokens themselves)")


def run_token_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run a token command; a database that cannot be reached (down, or not created yet) is
    one line on stderr and status 1, not a traceback."""
    try:
        return _run(args, settings.database_url)
    except psycopg.OperationalError as exc:
        print(f"fleetgate-api: cannot reach the database: {one_line(exc)}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, url: str) -> int:
    if args.action == "create":
        token_id, token = asyncio.run(create_token(url, args.scope, args.name))
        print(f"token {token_id} ({args.scope}), shown once:\n{token}")
        return 0
    if args.action == "revoke":
        if asyncio.run(revoke_token(url, args.token_id)):
            print(f"token {args.token_id} revoked")
            return 0
        print(f"no active token {args.token_id}")
        return 1
    for token_id, scope, name, created_at, revoked_at in asyncio.run(list_tokens(url)):
        state = f"revoked {revoked_at:%Y-%m-%d %H:%M}" if revoked_at else "active"
        print(f"{token_id}\t{scope}\t{state}\tcreated {created_at:%Y-%m-%d %H:%M}\t{name}")
    return 0
