"""Bulk import of devices (CSV and JSON): a result per row, bad rows named by row and column
while the good ones are imported, idempotent, thousands in one request."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.broker_logins import secret_matches
from tests.http_helpers import Api, meter_reading, write_readings
from tests.support import query

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)
CSV = "text/csv"
GOOD_AND_BAD = b"""kind,id,name,site,tags,nominalVoltageV,phases,batteryCapacityKwh
meter,M-1,Bay 1,Depot North,ac bay1,400,3,
meter,M-2,,Depot North,,230,1,
vehicle,EV-1,Van 1,Depot North,van,,,77.5
meter,M 3,,,,,,
meter,M-4,,,,400,2,
vehicle,EV-2,,,,400,,
charger,C-1,,,,,,
meter,M-5,,,,-5,,
vehicle,EV-3,,,,,,lots
meter,M-6,too,many,cells,,,,,
meter,M-1,Bay 1 again,,,,,
"""


async def import_(api: Api, body: bytes | list[Any], content_type: str = "application/json") -> Any:
    return await api.send("POST", "/v1/devices/import", body, "admin", content_type)


def by_row(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {row["row"]: row for row in result["results"]}


async def test_a_csv_with_bad_rows_imports_the_good_ones_and_names_the_bad(
    api: Api, database_url: str
) -> None:
    status, result = await import_(api, GOOD_AND_BAD, CSV)
    assert status == 207, result
    assert (result["created"], result["updated"], result["unchanged"], result["errors"]) == (
        3,
        0,
        0,
        8,
    )
    rows = by_row(result)
    assert [rows[n]["status"] for n in range(1, 12)] == ["created"] * 3 + ["error"] * 8
    errors = {n: (rows[n]["column"], rows[n]["message"]) for n in range(4, 12)}
    assert {n: column for n, (column, _) in errors.items()} == {
        4: "id",
        5: "phases",
        6: "nominalVoltageV",
        7: "kind",
        8: "nominalVoltageV",
        9: "batteryCapacityKwh",
        10: None,
        11: "id",
    }
    assert errors[4][1] == "must be 1-64 characters of [A-Za-z0-9._-]"
    assert errors[6][1] == "a vehicle has no nominalVoltageV"
    assert errors[10][1] == "10 cells; the header has 8"
    assert errors[11][1] == "the same device as row 1"
    for n in (1, 2, 3):
        assert rows[n]["mqttUsername"] == f"{rows[n]['kind']}/{rows[n]['id']}"
        [(secret_hash,)] = await query(
            database_url,
            f"SELECT secret_hash FROM {rows[n]['kind']} WHERE name = %s",
            rows[n]["id"],
        )
        assert secret_matches(rows[n]["secret"], secret_hash)
    _, m1 = await api.get("/v1/devices/meter/M-1", token="admin")
    assert (m1["name"], m1["site"], m1["tags"]) == ("Bay 1", "Depot North", ["ac", "bay1"])
    assert m1["metadata"] == {"nominalVoltageV": 400.0, "phases": 3}
    _, ev1 = await api.get("/v1/devices/vehicle/EV-1", token="admin")
    assert ev1["metadata"] == {"batteryCapacityKwh": 77.5}
    assert await query(database_url, "SELECT count(*) FROM meter") == [(2,)]


async def test_importing_again_changes_nothing_and_a_changed_row_updates(api: Api) -> None:
    devices: list[Any] = [
        {"kind": "meter", "id": "M-1", "tags": ["b", "a"], "metadata": {"nominalVoltageV": 400}},
        {"kind": "vehicle", "id": "EV-1", "name": "Van", "metadata": {"batteryCapacityKwh": 60}},
        {"kind": "vehicle", "id": "EV-2", "state": "disabled"},
    ]
    status, first = await import_(api, devices)
    assert status == 200, first
    assert [r["status"] for r in first["results"]] == ["created"] * 3
    assert all(r["secret"] for r in first["results"])
    status, again = await import_(api, devices[::-1])  # another order, the same devices
    assert status == 200
    assert [r["status"] for r in again["results"]] == ["unchanged"] * 3
    assert all("secret" not in r for r in again["results"])
    # The CSV of the same devices is the same import (tags in any order).
    csv = b"kind,id,tags,nominalVoltageV,name,batteryCapacityKwh,state\n"
    csv += b"meter,M-1,a b,400,,,\nvehicle,EV-1,,,Van,60,\nvehicle,EV-2,,,,,disabled\n"
    status, as_csv = await import_(api, csv, CSV)
    assert [r["status"] for r in as_csv["results"]] == ["unchanged"] * 3, as_csv
    # Disabled stays disabled unless the import says otherwise.
    await api.send("POST", "/v1/devices/meter/M-1/disable", b"", "admin")
    changed = [{**devices[0], "name": "Bay 1"}, devices[1], {"kind": "vehicle", "id": "EV-2"}]
    status, update = await import_(api, changed)
    assert [r["status"] for r in update["results"]] == ["updated", "unchanged", "unchanged"]
    assert "secret" not in update["results"][0]  # its login stays
    _, m1 = await api.get("/v1/devices/meter/M-1", token="admin")
    assert (m1["name"], m1["state"]) == ("Bay 1", "disabled")
    _, ev2 = await api.get("/v1/devices/vehicle/EV-2", token="admin")
    assert ev2["state"] == "disabled"
    status, enable = await import_(api, [{**changed[0], "state": "active"}])
    assert enable["results"][0]["status"] == "updated"
    # A field left out of a row is cleared: the row describes the device.
    status, cleared = await import_(api, [{"kind": "meter", "id": "M-1"}])
    assert cleared["results"][0]["status"] == "updated"
    _, m1 = await api.get("/v1/devices/meter/M-1", token="admin")
    assert (m1["name"], m1["tags"], m1["metadata"]["nominalVoltageV"], m1["state"]) == (
        None,
        [],
        None,
        "active",
    )


async def test_a_device_that_reported_is_updated_and_given_its_login(
    api: Api, database_url: str
) -> None:
    await write_readings(database_url, [meter_reading("M-old", NOW - timedelta(minutes=1), 1)])
    _, before = await api.get("/v1/devices/meter/M-old", token="admin")
    assert (before["state"], before["hasSecret"]) == ("active", False)
    assert before["lastSeenAt"] is not None
    row = {"kind": "meter", "id": "M-old", "metadata": {"nominalVoltageV": 400, "phases": 3}}
    status, result = await import_(api, [row])
    [imported] = result["results"]
    assert (status, imported["status"]) == (200, "updated")
    [(secret_hash,)] = await query(
        database_url, "SELECT secret_hash FROM meter WHERE name = 'M-old'"
    )
    assert secret_matches(imported["secret"], secret_hash)
    _, again = await import_(api, [row])
    assert again["results"][0]["status"] == "unchanged"


async def test_a_body_that_is_not_an_import_is_refused_whole(api: Api) -> None:
    json = "application/json"
    cases: list[tuple[bytes, str, int, str | None]] = [
        (b"kind,id,colour\nmeter,M-1,red\n", CSV, 400, "colour"),
        (b"id,name\nM-1,x\n", CSV, 400, "kind"),
        (b"kind,id,id\nmeter,M-1,M-1\n", CSV, 400, "id"),
        (b"", CSV, 400, None),
        (b"kind,id\n", CSV, 400, None),
        (b"kind,id\n\xff\xfe,x\n", CSV, 400, None),
        (b'kind,id\nmeter,"M-1\n', CSV, 400, None),
        (b"[]", json, 400, None),
        (b'{"kind": "meter", "id": "M-1"}', json, 400, None),
        (b"[" * 5000, json, 400, None),
        (b'[{"kind": "meter", "id": "M-1"}', json, 400, None),
        (b"kind,id\nmeter,M-1\n", "text/plain", 415, "Content-Type"),
    ]
    for body, content_type, status, parameter in cases:
        got, answer = await import_(api, body, content_type)
        assert (got, answer["error"].get("parameter")) == (status, parameter), (body[:40], answer)
    # NUL bytes (which PostgreSQL refuses in text) are a bad cell, not a 500.
    status, result = await import_(api, b"kind,id,name\nmeter,M\x00-1,\nmeter,M-2,a\x00b\n", CSV)
    assert status == 207
    assert [r["column"] for r in result["results"]] == ["id", "name"]
    # A JSON array whose elements are not devices: a result per element.
    status, result = await import_(api, b'[1, {"kind": "meter"}, {"kind": "meter", "id": "M"}]')
    assert status == 207
    assert [(r["status"], r.get("column")) for r in result["results"]] == [
        ("error", None),
        ("error", "id"),
        ("created", None),
    ]


async def test_thousands_of_devices_in_one_request(api: Api, database_url: str) -> None:
    lines = ["kind,id,site,tags,nominalVoltageV,phases,batteryCapacityKwh"]
    for n in range(2500):
        lines.append(
            f"meter,MTR-{n:05d},Site {n % 7},ac row{n % 10},{(230, 400)[n % 2]},{n % 2 * 2 + 1},"
        )
        lines.append(f"vehicle,EV-{n:05d},Site {n % 7},van,,,{40 + n % 60}")
    body = ("\n".join(lines) + "\n").encode()
    started = time.monotonic()
    status, result = await import_(api, body, CSV)
    took = time.monotonic() - started
    assert status == 200, result["results"][:3]
    assert result["created"] == 5000
    secrets = {r["secret"] for r in result["results"]}
    assert len(secrets) == 5000
    assert took < 20, took  # seconds; about 1 s unloaded (0.35 s of it hashing secrets)
    [(meters, four_hundred)] = await query(
        database_url, "SELECT count(*), count(*) FILTER (WHERE nominal_voltage_v = 400) FROM meter"
    )
    assert (meters, four_hundred) == (2500, 1250)
    started = time.monotonic()
    status, again = await import_(api, body, CSV)
    assert (status, again["unchanged"]) == (200, 5000)
    assert time.monotonic() - started < took + 5  # no secrets to make: faster still
