"""``python -m gateway.broker_sync``: keep Mosquitto's password and ACL files equal to the
registry, and manage the service logins (gateway, alert publisher, API, field engineers).

``run`` renders both files from the database, replaces them atomically when they change and
sends the broker SIGHUP (its pid from ``MOSQUITTO_PID_FILE``): Mosquitto re-reads them and
disconnects clients whose login is gone. It waits on the database's ``fleetgate_logins``
notifications, so a registry change reaches the broker within a second, and also looks every
``SYNC_INTERVAL_S`` in case a notification was missed. Run it beside the broker (same host or
pid namespace, the files on a shared volume).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, get_args

import psycopg

from gateway.broker_logins import (
    Login,
    ServiceRole,
    hash_secret,
    new_secret,
    render_acl_file,
    render_password_file,
    session_login,
)
from gateway.certificates import make_private_ca
from gateway.database import apply_schema
from gateway.env_options import (
    DATABASE_URL_OPTION,
    Option,
    SettingsError,
    positive_float,
    read_options,
)
from gateway.readings import DEVICE_ID_PATTERN, DEVICE_ID_RULE
from gateway.waiting import backoff_delay

logger = logging.getLogger(__name__)

_GATHER_S: Final = 0.2  # after a notification, wait this long for the rest of a bulk change
_CHANNEL: Final = "fleetgate_logins"
_LOGINS: Final = b"""
SELECT username, secret_hash, role FROM broker_login
UNION ALL
SELECT 'meter/' || name, secret_hash, 'device' FROM meter
WHERE state = 'active' AND secret_hash IS NOT NULL
UNION ALL
SELECT 'vehicle/' || name, secret_hash, 'device' FROM vehicle
WHERE state = 'active' AND secret_hash IS NOT NULL
ORDER BY 1
"""
_ADD_LOGIN: Final = b"""
INSERT INTO broker_login (username, role, secret_hash) VALUES (%s, %s, %s)
ON CONFLICT (username) DO UPDATE SET role = EXCLUDED.role, secret_hash = EXCLUDED.secret_hash
"""

OPTIONS: Final = (
    DATABASE_URL_OPTION,
    Option(
        "MOSQUITTO_PASSWORD_FILE",
        "password_file",
        "/mosquitto/logins/fleetgate.passwd",
        "The broker's password_file, written by run.",
        Path,
    ),
    Option(
        "MOSQUITTO_ACL_FILE",
        "acl_file",
        "/mosquitto/logins/fleetgate.acl",
        "The broker's acl_file, written by run.",
        Path,
    ),
    Option(
        "MOSQUITTO_PID_FILE",
        "pid_file",
        "/mosquitto/data/mosquitto.pid",
        "The broker's pid_file: run sends SIGHUP to that process after each change.",
        Path,
    ),
    Option(
        "MOSQUITTO_CERTS_DIR",
        "certs_dir",
        "/mosquitto/certs",
        "init: where the TLS listener's ca.crt, server.crt and server.key are; a private CA is "
        "made there when the folder has no server.crt.",
        Path,
    ),
    Option(
        "MOSQUITTO_CERT_NAMES",
        "cert_names",
        "mosquitto,localhost,127.0.0.1",
        "init: the host names and addresses the private CA's server certificate is for.",
        lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
    ),
    Option(
        "SERVICE_LOGINS",
        "service_logins",
        "",
        "init: service logins to create or reset, as username:role:ENV_VAR_WITH_ITS_SECRET "
        "separated by spaces (e.g. fleetgate-gateway:gateway:GATEWAY_MQTT_SECRET); a gateway "
        "login may end in :N for GATEWAY_SESSIONS=N (logins username-0 to username-N-1).",
        str,
    ),
    Option(
        "SYNC_INTERVAL_S",
        "interval_s",
        "30",
        "How often run compares the files with the registry even without a notification.",
        positive_float,
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class SyncSettings:
    database_url: str
    password_file: Path
    acl_file: Path
    pid_file: Path
    interval_s: float
    certs_dir: Path = Path("/mosquitto/certs")
    cert_names: tuple[str, ...] = ("localhost",)
    service_logins: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SyncSettings:
        return cls(**read_options(OPTIONS, environ))


async def load_logins(conn: psycopg.AsyncConnection[Any]) -> list[Login]:
    rows = await (await conn.execute(_LOGINS)).fetchall()
    return [Login(username, secret_hash, role) for username, secret_hash, role in rows]


def write_files(settings: SyncSettings, logins: list[Login]) -> bool:
    """Write both files if either changed (each replaced whole, never half-written); True if
    something was written."""
    changed = False
    for path, text in (
        (settings.password_file, render_password_file(logins)),
        (settings.acl_file, render_acl_file(logins)),
    ):
        if path.exists() and path.read_text() == text:
            continue
        partial = path.with_name(path.name + ".new")
        partial.write_text(text)
        partial.chmod(0o600 if path == settings.password_file else 0o644)
        partial.replace(path)
        changed = True
    return changed


def reload_broker(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, IndexError) as exc:
        logger.warning("could not tell the broker to reload (pid file %s): %s", pid_file, exc)


async def sync_once(conn: psycopg.AsyncConnection[Any], settings: SyncSettings) -> None:
    logins = await load_logins(conn)
    if write_files(settings, logins):
        reload_broker(settings.pid_file)
        devices = sum(login.role == "device" for login in logins)
        logger.info(
            "broker logins updated: %d devices, %d services", devices, len(logins) - devices
        )


async def run(settings: SyncSettings, stop: asyncio.Event) -> None:
    """Keep the files in step with the registry until ``stop`` is set; reconnect on errors."""
    attempt = 0
    while not stop.is_set():
        try:
            await apply_schema(settings.database_url)
            async with await psycopg.AsyncConnection.connect(
                settings.database_url, autocommit=True
            ) as conn:
                await conn.execute(f"LISTEN {_CHANNEL}".encode())
                await sync_once(conn, settings)
                attempt = 0
                loop = asyncio.get_running_loop()
                next_full = loop.time() + settings.interval_s
                while not stop.is_set():
                    if await _notified(conn) or loop.time() >= next_full:
                        await sync_once(conn, settings)
                        next_full = loop.time() + settings.interval_s
        except (psycopg.Error, OSError) as exc:
            delay = backoff_delay(attempt, 5.0)
            attempt += 1
            logger.warning("broker sync paused (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)


async def _notified(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True if a notification came within a second; then also takes those that follow within
    ``_GATHER_S`` (a bulk import sends one per device), so that they make one sync."""
    got = [n async for n in conn.notifies(timeout=1.0, stop_after=1)]
    while got:
        got = [n async for n in conn.notifies(timeout=_GATHER_S, stop_after=10_000)]
        if not got:
            return True
    return False


async def add_login(database_url: str, username: str, role: str, secret: str = "") -> str:
    """Create or reset a service login; returns its secret (a new one unless given)."""
    secret = secret or new_secret()
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(_ADD_LOGIN, (username, role, hash_secret(secret)))
    return secret


async def init(settings: SyncSettings, environ: Mapping[str, str]) -> None:
    """Before the broker starts: the service logins of SERVICE_LOGINS (their secrets from the
    environment), both files written once, and a private CA if no certificate is there."""
    for entry in settings.service_logins.split():
        username, role, variable, *sessions = entry.split(":")
        if role not in get_args(ServiceRole) or not environ.get(variable):
            raise SettingsError(f"SERVICE_LOGINS {entry!r}: role {role!r}, or ${variable} unset")
        for name in session_usernames(entry, username, role, sessions):
            await add_login(settings.database_url, name, role, environ[variable])
    async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
        write_files(settings, await load_logins(conn))
    if not (settings.certs_dir / "server.crt").exists():
        make_private_ca(settings.certs_dir, settings.cert_names)
        logger.info("made a private CA in %s for %s", settings.certs_dir, settings.cert_names)


def session_usernames(entry: str, username: str, role: str, sessions: list[str]) -> list[str]:
    """A gateway login with a session count (``name:gateway:VAR:4``, for GATEWAY_SESSIONS=4)
    is one login per session, ``name-0`` to ``name-3``, one secret: the broker makes each
    username its client id, and each session needs a client id of its own."""
    if not sessions:
        return [username]
    if role != "gateway" or len(sessions) > 1 or not sessions[0].isdigit():
        raise SettingsError(f"SERVICE_LOGINS {entry!r}: a session count is for gateway logins")
    count = int(sessions[0])
    return [session_login(username, number, count) for number in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.broker_sync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="keep the broker's files in step with the registry")
    commands.add_parser("init", help="service logins, the files and a CA, before the broker")
    add = commands.add_parser("login", help="create or reset a service login; prints its secret")
    add.add_argument("username", help=DEVICE_ID_RULE)
    add.add_argument("role", choices=get_args(ServiceRole))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = SyncSettings.from_env(os.environ)
        asyncio.run(_command(args, settings))
    except SettingsError as exc:
        print(f"fleetgate-broker-sync: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, OSError) as exc:
        print(f"fleetgate-broker-sync: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


async def _command(args: argparse.Namespace, settings: SyncSettings) -> None:
    if args.command == "login":
        if not re.match(DEVICE_ID_PATTERN, args.username):
            raise SettingsError(f"a username is {DEVICE_ID_RULE}")
        secret = await add_login(settings.database_url, args.username, args.role)
        print(f"{args.username} {secret}")
    elif args.command == "init":
        await init(settings, os.environ)
    else:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run(settings, stop)


if __name__ == "__main__":
    sys.exit(main())
