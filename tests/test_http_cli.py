"""``python -m http_api``: --help, the token commands, and the server answering over TCP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp

from http_api.analytics import status_of
from http_api.settings import OPTIONS, Settings
from tests.services import Mosquitto, free_port


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
