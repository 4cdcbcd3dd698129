"""``python -m http_api device ...``: every verb against a real database, as an operator runs
them; bad options and a missing database fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from gateway.broker_logins import secret_matches
from http_api.__main__ import main
from tests.services import Postgres, free_port


class Cli:
    def __init__(self, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.database_url = database_url
        self._capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        """Run ``python -m http_api device ARGS`` in this process: status, stdout, stderr."""
        status = main(["device", *args])
        out, err = self._capsys.readouterr()
        return status, out, err

    def stored_hash(self, kind: str, device_id: str) -> str:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                f"SELECT secret_hash FROM {kind} WHERE name = %s".encode(), (device_id,)
            ).fetchone()
        assert row is not None
        return str(row[0])


@pytest.fixture
def cli(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    monkeypatch.setenv("DATABASE_URL", database_url)
    return Cli(database_url, capsys)


def _secret(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith("secret (shown once): ")]
    return line.removeprefix("secret (shown once): ")


def test_create_show_update_list_rotate_disable_delete(cli: Cli) -> None:
    status, out, err = cli(
        "create", "meter", "M-1", "--name", "Bay 1", "--site", "North",
        "--tags", "ac bay1", "--nominal-voltage", "400", "--phases", "3",
    )  # fmt: skip
    assert status == 0, err
    assert "mqtt username: meter/M-1" in out
    secret = _secret(out)
    assert secret_matches(secret, cli.stored_hash("meter", "M-1"))
    status, out, err = cli("create", "meter", "M-1")
    assert status == 1
    [line] = err.splitlines()
    assert line.startswith("fleetgate-api: meter 'M-1' is already registered")
    status, out, _ = cli("show", "meter", "M-1")
    assert status == 0
    assert "nominalVoltageV: 400.0" in out
    assert "phases: 3" in out
    assert "tags: ac bay1" in out
    assert "hasSecret: True" in out
    assert secret not in out
    assert "$7$" not in out
    status, out, err = cli("update", "meter", "M-1", "--site", "", "--tags", "dc", "--phases", "1")
    assert status == 0, err
    assert "site: -" in out
    assert "tags: dc" in out
    assert "phases: 1" in out
    assert cli("create", "vehicle", "EV-1", "--battery-capacity", "77")[0] == 0
    status, out, _ = cli("list")
    assert [line.split("\t")[:3] for line in out.splitlines()] == [
        ["meter", "M-1", "active"],
        ["vehicle", "EV-1", "active"],
    ]
    status, out, _ = cli("rotate", "meter", "M-1")
    assert status == 0
    rotated = _secret(out)
    assert rotated != secret
    assert secret_matches(rotated, cli.stored_hash("meter", "M-1"))
    status, out, _ = cli("disable", "vehicle", "EV-1")
    assert (status, "state: disabled" in out) == (0, True)
    status, out, _ = cli("list", "--state", "disabled")
    assert [line.split("\t")[1] for line in out.splitlines()] == ["EV-1"]
    status, out, _ = cli("delete", "vehicle", "EV-1")
    assert (status, out.splitlines()[-1]) == (0, "deleted")
    status, _, err = cli("delete", "vehicle", "EV-1")
    assert status == 1
    assert err == "fleetgate-api: no vehicle 'EV-1' is registered\n"


def test_bad_options_are_named(cli: Cli) -> None:
    runs = [
        (("create", "meter", "M-1", "--phases", "2"), "invalid --phases: Invalid enum value 2"),
        (("create", "meter", "M 1"), "invalid id: must be 1-64 characters of [A-Za-z0-9._-]"),
        (("create", "vehicle", "EV-1", "--phases", "3"), "invalid --phases: not an option"),
        (("create", "meter", "M-1", "--nominal-voltage", "lots"), "invalid --nominal-voltage"),
        (("update", "meter", "M-1", "--tags", "a,b c%"), "invalid --tags"),
    ]
    for args, message in runs:
        status, _, err = cli(*args)
        assert status == 2, (args, err)
        [line] = err.splitlines()
        assert line.startswith(f"fleetgate-api: {message}"), line


def test_import_a_file_twice(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text(
        "kind,id,site,nominalVoltageV,phases\nmeter,M-1,North,400,3\nmeter,M 2,,,\n"
        "meter,M-3,,230,1\n"
    )
    status, out, err = cli("import", str(path))
    assert status == 1  # a row was refused; the others are imported
    assert err.splitlines()[-1] == "2 created, 0 updated, 0 unchanged, 1 refused"
    lines = [line.split(",") for line in out.splitlines()]
    assert lines[0] == [
        "row",
        "status",
        "kind",
        "id",
        "mqttUsername",
        "secret",
        "column",
        "message",
    ]
    assert [line[:4] for line in lines[1:]] == [
        ["1", "created", "meter", "M-1"],
        ["2", "error", "", ""],
        ["3", "created", "meter", "M-3"],
    ]
    assert secret_matches(lines[1][5], cli.stored_hash("meter", "M-1"))
    assert lines[2][6] == "id"
    path.write_text(
        '[{"kind": "meter", "id": "M-1", "site": "North", '
        '"metadata": {"nominalVoltageV": 400, "phases": 3}}]'
    )
    status, out, err = cli("import", str(path), "--format", "json")
    assert status == 0, err
    assert err.splitlines()[-1] == "0 created, 0 updated, 1 unchanged, 0 refused"
    status, _, err = cli("import", str(tmp_path / "missing.csv"))
    assert status == 2
    assert "cannot read" in err


def test_device_commands_without_their_database_fail_in_one_line(postgres: Postgres) -> None:
    missing = postgres.url.rsplit("/", 1)[0] + "/not_created_yet"
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/fleetgate"
    for url, args in [(missing, ("list",)), (unreachable, ("show", "meter", "M-1"))]:
        result = subprocess.run(
            [sys.executable, "-m", "http_api", "device", *args],
            env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("fleetgate-api: cannot reach the database: "), line
