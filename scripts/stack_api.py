"""What the demo asks of the HTTP API: health, bearer tokens, and the chargers' links."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from stack_processes import PROJECT, pause

PYTHON = sys.executable
# How long the demo waits for every simulated device to be heard before linking it. 20 s was
# once too short while the replay of the last 24 h kept both cores busy (a CI run had EV-0001
# unlinked); the summary waits for this, so it stays well under the test's 90 s.
LINK_TIMEOUT_S = 45.0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _token_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "http_api", "token", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT,
    )


def create_token(env: dict[str, str], scope: str) -> tuple[str, str] | None:
    """A new token of ``scope`` as (id, secret), or None after saying why not."""
    done = _token_command(env, "create", "--scope", scope, "--name", f"demo-{scope}")
    # It prints "token <id> (<scope>), shown once:" and then the token on a line of its own.
    found = re.search(r"token (\S+) \(", done.stdout)
    lines = done.stdout.split()
    if done.returncode or not found or not lines:
        print(f"could not create a {scope} token:\n{done.stdout}{done.stderr}", flush=True)
        return None
    return found[1], lines[-1]


def revoke_token(env: dict[str, str], token_id: str) -> None:
    _token_command(env, "revoke", token_id)


def _post(url: str, body: dict[str, str], token: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def link_chargers(api_url: str, env: dict[str, str], devices: int) -> int:
    """Link meter N to vehicle N, as the simulator's chargers are wired, from before its first
    reading: efficiency needs to know which meter fed which battery. Returns how many hold."""
    created = create_token(env, "write")
    if created is None:
        return 0
    token_id, token = created
    since = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
    waiting = set(range(1, devices + 1))
    deadline = time.monotonic() + LINK_TIMEOUT_S
    try:
        while waiting and time.monotonic() < deadline:
            for number in sorted(waiting):
                body = {"vehicleId": f"EV-{number:04d}", "meterId": f"MTR-{number:04d}"}
                status = _post(f"{api_url}/v1/links", {**body, "since": since}, token)
                # 404: a device not heard from yet; 409: linked in an earlier run, from later.
                if status in (200, 201, 409):
                    waiting.discard(number)
            if waiting:
                pause(0.5)
    finally:
        revoke_token(env, token_id)  # the demo keeps no write access lying around
    return devices - len(waiting)
