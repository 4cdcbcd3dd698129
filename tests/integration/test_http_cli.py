"""``python -m http_api``: --help, the token commands, and the server answering over TCP; started
before its database, it waits; a token command without its database fails in one line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import psycopg

from http_api.analytics import status_of
from http_api.settings import OPTIONS, Settings
from tests.services import Mosquitto, Postgres, free_port
from tests.support import wait_until


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "http_api", *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_environment_variable() -> None:
    result = _run("--help", env={})
    assert result.returncode == 0
    for option in OPTIONS:
        assert f"{option.env} (default {option.default})" in result.stdout


def test_a_bad_setting_is_refused_clearly() -> None:
    result = _run(env={"HTTP_PORT": "99999"})
    assert result.returncode == 2
    assert "HTTP_PORT" in result.stderr


def test_efficiency_statuses_follow_the_thresholds() -> None:
    settings = Settings.from_env({"EFFICIENCY_GOOD": "0.8"})
    assert [status_of(e, settings) for e in (None, 1.01, 1.0, 0.92, 0.8, 0.79, 0.74)] == [
        "noData",
        "suspect",
        "excellent",
        "excellent",
        "good",
        "warning",
        "critical",
    ]


async def test_tokens_from_the_command_line_open_the_served_api(
    database_url: str, mosquitto: Mosquitto
) -> None:
    env = {"DATABASE_URL": database_url, "MQTT_URL": mosquitto.url}
    created = await asyncio.to_thread(
        _run, "token", "create", "--scope", "read", "--name", "cli", env=env
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    listed = await asyncio.to_thread(_run, "token", "list", env=env)
    assert "cli" in listed.stdout
    assert token not in listed.stdout
    token_id = created.stdout.split()[1]
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "http_api",
        env=os.environ | env | {"HTTP_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(
                        f"http://127.0.0.1:{port}/v1/status/overview",
                        headers={"Authorization": f"Bearer {token}"},
                    ) as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the API did not answer")
        revoked = await asyncio.to_thread(_run, "token", "revoke", token_id, env=env)
        assert revoked.returncode == 0, revoked.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 30) == 0


def test_token_commands_without_their_database_fail_in_one_line(postgres: Postgres) -> None:
    missing = postgres.url.rsplit("/", 1)[0] + "/not_created_yet"
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/fleetgate"
    runs = [
        (missing, ("token", "list")),
        (missing, ("token", "create", "--scope", "read")),
        (missing, ("token", "revoke", "1")),
        (unreachable, ("token", "list")),
    ]
    for url, args in runs:
        result = _run(*args, env={"DATABASE_URL": url})
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("fleetgate-api: cannot reach the database: "), line
        assert ("not_created_yet" if url == missing else "refused") in line, line


async def test_the_api_started_before_its_database_exists_serves_once_it_does(
    postgres: Postgres, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    name = f"later_{uuid.uuid4().hex[:8]}"
    port = free_port()
    log = tmp_path / "api.log"
    env = os.environ | {
        "DATABASE_URL": postgres.url.rsplit("/", 1)[0] + "/" + name,
        "MQTT_URL": mosquitto.url,
        "HTTP_PORT": str(port),
    }
    with log.open("wb") as out:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "http_api", env=env, stdout=subprocess.DEVNULL, stderr=out
        )
    try:

        async def waiting() -> bool:
            text = log.read_text()
            return "waiting for the database" in text and f'"{name}" does not exist' in text

        await wait_until(waiting, seconds=10, what="the API to say what it waits for")
        assert server.returncode is None
        async with await psycopg.AsyncConnection.connect(postgres.url, autocommit=True) as conn:
            await conn.execute(f"CREATE DATABASE {name}".encode())

        async def healthy() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/health") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(healthy, seconds=10, what="the API to serve once the database exists")
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 30) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


async def test_a_stop_signal_while_waiting_for_the_database_exits_0(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    log = tmp_path / "api.log"
    env = os.environ | {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/fleetgate",
        "MQTT_URL": mosquitto.url,
        "HTTP_PORT": str(free_port()),
    }
    with log.open("wb") as out:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "http_api", env=env, stdout=subprocess.DEVNULL, stderr=out
        )

    async def waiting() -> bool:
        return "waiting for the database" in log.read_text()

    try:
        await wait_until(waiting, seconds=10, what="the API to wait for the database")
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.wait(), 10) == 0, log.read_text()
