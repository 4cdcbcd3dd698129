"""The device registry over HTTP: create, show, list, change, rotate, disable and delete, under
the admin scope; secrets shown once and stored as the broker's hash; every change of a login
notified on fleetgate_logins."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.broker_logins import secret_matches
from http_api.params import encode_cursor
from tests.http_helpers import Api, meter_reading, write_readings
from tests.support import query

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)
METER: dict[str, Any] = {
    "kind": "meter",
    "id": "M-400",
    "name": "Bay 4 charger",
    "site": "Depot North",
    "tags": ["dc-fast", "bay4", "bay4"],
    "metadata": {"nominalVoltageV": 400, "phases": 3},
}


async def stored_hash(api: Api, kind: str, device_id: str) -> str | None:
    rows = await query(
        api.settings.database_url, f"SELECT secret_hash FROM {kind} WHERE name = %s", device_id
    )
    return rows[0][0] if rows else None


async def test_create_shows_the_secret_once_and_stores_its_hash(api: Api) -> None:
    status, created = await api.send("POST", "/v1/devices", METER, token="admin")
    assert status == 201, created
    device = created["device"]
    assert created["mqttUsername"] == device["mqttUsername"] == "meter/M-400"
    assert {k: device[k] for k in ("kind", "id", "name", "site", "tags", "state")} == {
        "kind": "meter",
        "id": "M-400",
        "name": "Bay 4 charger",
        "site": "Depot North",
        "tags": ["bay4", "dc-fast"],  # a set, sorted
        "state": "active",
    }
    assert device["metadata"] == {"nominalVoltageV": 400.0, "phases": 3}
    assert (device["hasSecret"], device["lastSeenAt"]) == (True, None)
    assert device["createdAt"].endswith("Z")
    secret = created["secret"]
    secret_hash = await stored_hash(api, "meter", "M-400")
    assert secret_hash is not None
    assert secret_hash.startswith("$7$")
    assert secret_matches(secret, secret_hash)
    status, shown = await api.get("/v1/devices/meter/M-400", token="admin")
    assert (status, shown) == (200, device)
    _, listed = await api.get("/v1/devices", token="admin")
    assert listed == {"devices": [device], "nextCursor": None}
    for body in (shown, listed):
        assert secret not in str(body)
        assert "$7$" not in str(body)
    status, again = await api.send("POST", "/v1/devices", METER, token="admin")
    assert (status, again["error"]["code"], again["error"]["parameter"]) == (409, "conflict", "id")
    vehicle = {"kind": "vehicle", "id": "M-400"}  # another kind, another device
    status, created = await api.send("POST", "/v1/devices", vehicle, token="admin")
    assert status == 201
    assert created["device"]["metadata"] == {"batteryCapacityKwh": None}
    assert created["device"]["tags"] == []


async def test_device_routes_need_the_admin_scope(api: Api) -> None:
    routes = [
        ("POST", "/v1/devices", METER),
        ("GET", "/v1/devices", None),
        ("POST", "/v1/devices/import", [METER]),
        ("GET", "/v1/devices/meter/M-400", None),
        ("PATCH", "/v1/devices/meter/M-400", {"name": "x"}),
        ("POST", "/v1/devices/meter/M-400/rotate-secret", {}),
        ("POST", "/v1/devices/meter/M-400/disable", {}),
        ("DELETE", "/v1/devices/meter/M-400", {}),
    ]
    for method, path, body in routes:
        for token in ("read", "write"):
            status, answer = await api.send(method, path, body or b"", token=token)
            assert (status, answer["error"]["code"]) == (403, "forbidden"), (method, path)
            assert "'admin'" in answer["error"]["message"]
    assert await query(api.settings.database_url, "SELECT count(*) FROM meter") == [(0,)]
    # admin implies write and read
    assert (await api.get("/v1/status/overview", token="admin"))[0] == 200
    link = {"vehicleId": "EV-x", "meterId": "M-x"}
    assert (await api.send("POST", "/v1/links", link, token="admin"))[0] == 404


async def test_bad_input_is_a_400_naming_the_field(api: Api) -> None:
    def meter(**changes: Any) -> dict[str, Any]:
        return {**METER, **changes}

    cases: list[tuple[Any, str | None]] = [
        (b"{not json", None),
        (b"[]", None),
        (b'{"kind": "meter", "id": "M-1", "tags": [[[["deep"]]]]}', None),
        (b"[" * 10_000, None),
        (b'{"kind": "meter", "id": "M-1", "name": "\\ud800"}', None),  # a lone surrogate
        (b'{"kind": "meter", "id": "M-1", "name": "\xff"}', None),  # not UTF-8
        ({"id": "M-1"}, "kind"),
        (meter(kind="charger"), "kind"),
        (meter(id="M 1"), "id"),
        (meter(id="M-1\n"), "id"),
        ({"kind": "meter"}, "id"),
        (meter(name=""), "name"),
        (meter(name="a\u0000b"), "name"),
        (meter(name="x" * 201), "name"),
        (meter(site="%%%"), "site"),
        (meter(site="two  spaces"), "site"),
        (meter(tags=["ok", "not ok"]), "tags[1]"),
        (meter(tags=[f"t{n}" for n in range(33)]), "tags"),
        (meter(tags="bay4"), "tags"),
        (meter(state="gone"), "state"),
        (meter(colour="red"), "colour"),
        (meter(metadata={"phases": 2}), "metadata.phases"),
        (meter(metadata={"phases": "3"}), "metadata.phases"),
        (meter(metadata={"nominalVoltageV": -230}), "metadata.nominalVoltageV"),
        (meter(metadata={"nominalVoltageV": 1e400}), "metadata.nominalVoltageV"),
        (meter(metadata={"nominalVoltageV": 5000}), "metadata.nominalVoltageV"),
        (meter(metadata={"batteryCapacityKwh": 60}), "metadata.batteryCapacityKwh"),
        ({"kind": "vehicle", "id": "EV-1", "metadata": {"phases": 3}}, "metadata.phases"),
        (
            {"kind": "vehicle", "id": "EV-1", "metadata": {"batteryCapacityKwh": 0}},
            "metadata.batteryCapacityKwh",
        ),
    ]
    for body, field in cases:
        raw = body if isinstance(body, bytes) else None
        if raw is None:
            raw = repr_json(body)
        status, answer = await api.send("POST", "/v1/devices", raw, token="admin")
        assert status == 400, (body, answer)
        error = answer["error"]
        if field is None:
            assert error["code"] in ("invalidBody", "invalidParameter"), (body, error)
        else:
            assert (error["code"], error.get("parameter")) == ("invalidParameter", field), body
        assert "regex" not in error["message"], error
    assert await query(api.settings.database_url, "SELECT count(*) FROM meter") == [(0,)]
    paths = [
        ("/v1/devices/charger/M-1", 400, "kind"),
        ("/v1/devices/meter/M%201", 400, "id"),
        ("/v1/devices/meter/M-9", 404, "id"),
    ]
    for path, expected, parameter in paths:
        for method in ("GET", "PATCH", "DELETE"):
            status, answer = await api.send(method, path, b"{}", token="admin")
            assert (status, answer["error"].get("parameter")) == (expected, parameter), path
        for action in ("rotate-secret", "disable"):
            status, answer = await api.send("POST", f"{path}/{action}", b"", token="admin")
            assert (status, answer["error"].get("parameter")) == (expected, parameter), path
    for query_string, parameter in [
        ({"kind": "charger"}, "kind"),
        ({"state": "on"}, "state"),
        ({"site": "a\tb"}, "site"),
        ({"tag": "a b"}, "tag"),
        ({"limit": "0"}, "limit"),
        ({"cursor": encode_cursor('["meter"]')}, "cursor"),  # not a cursor of this list
        ({"cursor": encode_cursor('["x", "M-1"]')}, "cursor"),
        ({"cursor": encode_cursor('["meter", "M 1"]')}, "cursor"),
    ]:
        status, answer = await api.get("/v1/devices", token="admin", **query_string)
        assert (status, answer["error"]["parameter"]) == (400, parameter), query_string


def repr_json(body: Any) -> bytes:
    return json.dumps(body).replace("Infinity", "1e400").encode()  # JSON cannot say inf


async def test_patch_changes_what_it_names(api: Api) -> None:
    assert (await api.send("POST", "/v1/devices", METER, token="admin"))[0] == 201
    path = "/v1/devices/meter/M-400"
    status, device = await api.send(
        "PATCH", path, {"site": None, "tags": ["b", "a"], "metadata": {"phases": 1}}, token="admin"
    )
    assert status == 200, device
    assert (device["name"], device["site"], device["tags"]) == ("Bay 4 charger", None, ["a", "b"])
    assert device["metadata"] == {"nominalVoltageV": 400.0, "phases": 1}
    status, device = await api.send(
        "PATCH", path, {"name": None, "state": "disabled", "metadata": {}}, token="admin"
    )
    assert (status, device["name"], device["state"]) == (200, None, "disabled")
    assert device["metadata"] == {"nominalVoltageV": 400.0, "phases": 1}
    status, device = await api.send("PATCH", path, {}, token="admin")
    assert (status, device["state"]) == (200, "disabled")
    for body, field in [
        ({"state": None}, "state"),
        ({"tags": None}, "tags"),
        ({"id": "M-401"}, "id"),
        ({"metadata": {"batteryCapacityKwh": 50}}, "metadata.batteryCapacityKwh"),
        ({"metadata": {"nominalVoltageV": 0}}, "metadata.nominalVoltageV"),
    ]:
        status, answer = await api.send("PATCH", path, body, token="admin")
        assert (status, answer["error"]["parameter"]) == (400, field), body
    vehicle = {"kind": "vehicle", "id": "EV-1", "metadata": {"batteryCapacityKwh": 77}}
    assert (await api.send("POST", "/v1/devices", vehicle, token="admin"))[0] == 201
    status, device = await api.send(
        "PATCH", "/v1/devices/vehicle/EV-1", {"metadata": {"batteryCapacityKwh": None}}, "admin"
    )
    assert (status, device["metadata"]) == (200, {"batteryCapacityKwh": None})
    status, answer = await api.send(
        "PATCH", "/v1/devices/vehicle/EV-1", {"metadata": {"phases": 3}}, token="admin"
    )
    assert (status, answer["error"]["parameter"]) == (400, "metadata.phases")


async def test_list_filters_and_pages(api: Api) -> None:
    devices = [
        {"kind": "vehicle", "id": "EV-1", "site": "North", "tags": ["van"]},
        {"kind": "meter", "id": "M-2", "site": "South", "tags": ["ac"]},
        {"kind": "meter", "id": "M-1", "site": "North", "tags": ["ac", "old"]},
        {"kind": "vehicle", "id": "EV-2", "site": "South", "state": "disabled"},
        {"kind": "meter", "id": "M-3", "site": "North"},
    ]
    for device in devices:
        assert (await api.send("POST", "/v1/devices", device, token="admin"))[0] == 201

    async def ids(**filters: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = {**filters, **({"cursor": cursor} if cursor else {})}
            status, body = await api.get("/v1/devices", token="admin", limit=2, **page)
            assert status == 200, body
            assert len(body["devices"]) <= 2
            seen += [f"{d['kind']}/{d['id']}" for d in body["devices"]]
            cursor = body["nextCursor"]
            if cursor is None:
                return seen

    everything = ["meter/M-1", "meter/M-2", "meter/M-3", "vehicle/EV-1", "vehicle/EV-2"]
    assert await ids() == everything
    assert await ids(kind="vehicle") == ["vehicle/EV-1", "vehicle/EV-2"]
    assert await ids(state="disabled") == ["vehicle/EV-2"]
    assert await ids(site="North") == ["meter/M-1", "meter/M-3", "vehicle/EV-1"]
    assert await ids(tag="ac") == ["meter/M-1", "meter/M-2"]
    assert await ids(tag="ac", site="North", kind="meter", state="active") == ["meter/M-1"]
    assert await ids(site="Nowhere") == []


async def test_rotate_disable_and_delete(api: Api, database_url: str) -> None:
    _, created = await api.send("POST", "/v1/devices", METER, token="admin")
    before = await stored_hash(api, "meter", "M-400")
    status, rotated = await api.send(
        "POST", "/v1/devices/meter/M-400/rotate-secret", b"", token="admin"
    )
    assert status == 200, rotated
    after = await stored_hash(api, "meter", "M-400")
    assert after is not None
    assert after != before
    assert rotated["secret"] != created["secret"]
    assert secret_matches(rotated["secret"], after)
    assert not secret_matches(created["secret"], after)
    assert rotated["mqttUsername"] == "meter/M-400"
    # A device that reported has history: it can be disabled, not deleted.
    await write_readings(database_url, [meter_reading("M-400", NOW - timedelta(minutes=1), 1)])
    status, answer = await api.send("DELETE", "/v1/devices/meter/M-400", b"", token="admin")
    assert (status, answer["error"]["code"]) == (409, "conflict")
    assert "disable" in answer["error"]["message"]
    status, disabled = await api.send("POST", "/v1/devices/meter/M-400/disable", b"", "admin")
    assert (status, disabled["state"]) == (200, "disabled")
    assert disabled["lastSeenAt"] is not None
    rows = await query(database_url, "SELECT count(*) FROM meter_reading")
    assert rows == [(1,)]  # history kept
    # Linked, never reported: history too.
    for device in ({"kind": "vehicle", "id": "EV-1"}, {"kind": "meter", "id": "M-1"}):
        assert (await api.send("POST", "/v1/devices", device, token="admin"))[0] == 201
    assert (await api.send("POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-1"}))[0] == 201
    assert (await api.send("DELETE", "/v1/devices/vehicle/EV-1", b"", token="admin"))[0] == 409
    assert (await api.send("DELETE", "/v1/devices/meter/M-1", b"", token="admin"))[0] == 409
    # Never reported, never linked: deleted.
    assert (await api.send("POST", "/v1/devices", {"kind": "meter", "id": "M-2"}, "admin"))[
        0
    ] == 201
    status, deleted = await api.send("DELETE", "/v1/devices/meter/M-2", b"", token="admin")
    assert (status, deleted["id"]) == (200, "M-2")
    assert (await api.get("/v1/devices/meter/M-2", token="admin"))[0] == 404
    assert (await api.send("DELETE", "/v1/devices/meter/M-2", b"", token="admin"))[0] == 404


class Logins:
    """A broker-sync process's view: the payloads heard on fleetgate_logins."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self._heard: list[str] = []
        conn.add_notify_handler(lambda notify: self._heard.append(notify.payload))

    async def heard(self) -> list[str]:
        """What was notified until now (a round trip on the listening connection delivers
        every notification committed before it), and forget it."""
        await self._conn.execute("SELECT 1")
        heard, self._heard = self._heard, []
        return heard


@pytest.fixture
async def logins(database_url: str, api: Api) -> AsyncIterator[Logins]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("LISTEN fleetgate_logins")
        yield Logins(conn)


async def test_every_change_of_a_login_is_notified(
    api: Api, database_url: str, logins: Logins
) -> None:
    await api.send("POST", "/v1/devices", METER, token="admin")
    assert await logins.heard() == ["meter/M-400"]
    await api.send("PATCH", "/v1/devices/meter/M-400", {"name": "x", "tags": []}, "admin")
    await api.send("PATCH", "/v1/devices/meter/M-400", {"state": "active"}, "admin")  # as it was
    await write_readings(database_url, [meter_reading("M-400", NOW, 1)])  # live-row update
    assert await logins.heard() == []
    await api.send("POST", "/v1/devices/meter/M-400/rotate-secret", b"", "admin")
    assert await logins.heard() == ["meter/M-400"]
    await api.send("POST", "/v1/devices/meter/M-400/disable", b"", "admin")
    assert await logins.heard() == ["meter/M-400"]
    await api.send("POST", "/v1/devices", {"kind": "vehicle", "id": "EV-9"}, "admin")
    await api.send("DELETE", "/v1/devices/vehicle/EV-9", b"", "admin")
    assert await logins.heard() == ["vehicle/EV-9", "vehicle/EV-9"]
    # what the gateway does on a new device's first reading (open enrolment)
    await query(database_url, "INSERT INTO vehicle (name) VALUES ('EV-new') RETURNING name")
    assert await logins.heard() == ["vehicle/EV-new"]
    await query(database_url, "UPDATE vehicle SET state = 'disabled' RETURNING name")
    assert await logins.heard() == ["vehicle/EV-new"]
