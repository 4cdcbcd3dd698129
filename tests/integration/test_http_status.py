"""Live status, vehicle lists and their pagination, through the real app and database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.http_helpers import Api, meter_reading, vehicle_reading, write_readings

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now_is_now() -> None:
    """ "Online" is judged against the wall clock: take NOW when each test starts, not when the
    module was imported (a long suite runs these tests minutes later)."""
    global NOW  # noqa: PLW0603
    NOW = datetime.now(UTC).replace(microsecond=0)


async def test_vehicle_status_reports_latest_reading_and_online(
    api: Api, database_url: str
) -> None:
    await write_readings(
        database_url,
        [
            vehicle_reading("EV-1", NOW - timedelta(minutes=5), 1.5, temp=31),
            vehicle_reading("EV-1", NOW - timedelta(minutes=1), 2.25, temp=33, soc=61),
            vehicle_reading("EV-old", NOW - timedelta(minutes=10), 1.0, temp=50),
        ],
    )
    status, body = await api.get("/v1/status/vehicle/EV-1")
    assert status == 200
    assert body["online"] is True
    assert body["charging"] is True
    assert body["deliveredDc"] == 2.25
    assert body["soc"] == 61
    assert body["takenAt"] == (NOW - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert body["receivedAt"].endswith("Z")
    assert body["batteryTempWarning"] is False
    status, body = await api.get("/v1/status/vehicle/EV-old")
    assert (body["online"], body["charging"], body["batteryTempWarning"]) == (False, False, True)


async def test_meter_status_and_its_linked_vehicle(api: Api, database_url: str) -> None:
    await write_readings(
        database_url,
        [
            meter_reading("M-1", NOW - timedelta(minutes=2), 0.5, voltage=231),
            vehicle_reading("EV-1", NOW - timedelta(minutes=2), 0.4),
        ],
    )
    assert (await api.send("POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-1"}))[0] == 201
    status, body = await api.get("/v1/status/meter/M-1")
    assert status == 200
    assert body["consumedAc"] == 0.5
    assert body["voltage"] == 231
    assert body["online"] is True
    assert body["vehicleId"] == "EV-1"
    _, vehicle = await api.get("/v1/status/vehicle/EV-1")
    assert vehicle["meterId"] == "M-1"


async def test_unknown_and_malformed_device_ids(api: Api, database_url: str) -> None:
    await write_readings(database_url, [vehicle_reading("EV-1", NOW, 1)])
    status, body = await api.get("/v1/status/vehicle/EV-404")
    assert status == 404
    assert body["error"]["code"] == "notFound"
    assert body["error"]["parameter"] == "vehicleId"
    status, body = await api.get("/v1/status/meter/M-404")
    assert (status, body["error"]["parameter"]) == (404, "meterId")
    status, body = await api.get("/v1/status/vehicle/bad%20id!")
    assert status == 400
    assert body["error"] == {
        "code": "invalidParameter",
        "parameter": "vehicleId",
        "message": body["error"]["message"],
    }
    assert "device id" in body["error"]["message"]


async def test_overview_counts_agree_with_the_lists(api: Api, database_url: str) -> None:
    recent, stale = NOW - timedelta(minutes=1), NOW - timedelta(minutes=30)
    await write_readings(
        database_url,
        [
            vehicle_reading("EV-a", recent, 1.0, temp=30),  # charging
            vehicle_reading("EV-b", recent, 0.0, temp=47),  # online, idle, hot
            vehicle_reading("EV-c", stale, 2.0, temp=20),  # offline: not charging now
            meter_reading("M-a", recent, 0.25),
            meter_reading("M-b", recent, 0.5),
            meter_reading("M-c", stale, 9.0),
        ],
    )
    status, body = await api.get("/v1/status/overview")
    assert status == 200
    assert body["meters"] == {"online": 2, "offline": 1}
    assert body["vehicles"] == {
        "online": 2,
        "offline": 1,
        "charging": 1,
        "batteryTempWarning": 1,
    }
    assert body["fleetPowerKw"] == 45.0  # 0.75 kWh in the last 60 s interval
    _, charging = await api.get("/v1/status/vehicles", charging="true")
    assert [v["vehicleId"] for v in charging["vehicles"]] == ["EV-a"]
    _, idle = await api.get("/v1/status/vehicles", charging="false")
    assert [v["vehicleId"] for v in idle["vehicles"]] == ["EV-b", "EV-c"]
    _, hot = await api.get("/v1/status/vehicles", warning="true")
    assert [v["vehicleId"] for v in hot["vehicles"]] == ["EV-b"]


async def test_vehicle_list_pages_with_a_keyset_cursor(api: Api, database_url: str) -> None:
    names = [f"EV-{i:02d}" for i in range(7)]
    await write_readings(database_url, [vehicle_reading(n, NOW, 1.0) for n in names])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        status, body = await api.get("/v1/status/vehicles", **query)
        assert status == 200
        seen += [v["vehicleId"] for v in body["vehicles"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == names
    assert pages == 3
    for bad, parameter in (
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"charging": "yes"}, "charging"),
        ({"cursor": "%%%"}, "cursor"),
    ):
        status, body = await api.get("/v1/status/vehicles", **bad)
        assert (status, body["error"]["parameter"]) == (400, parameter), bad


async def test_meter_list_filters_and_pages(api: Api, database_url: str) -> None:
    recent, stale = NOW - timedelta(minutes=1), NOW - timedelta(minutes=30)
    await write_readings(
        database_url,
        [
            meter_reading("M-a", recent, 0.25, voltage=231.04),
            meter_reading("M-b", recent, 0.5),
            meter_reading("M-c", stale, 9.0),
            meter_reading("M-d", stale, 1.0),
            vehicle_reading("EV-1", recent, 0.2),
        ],
    )
    assert (await api.send("POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-c"}))[0] == 201
    status, body = await api.get("/v1/status/meters")
    assert status == 200
    assert [m["meterId"] for m in body["meters"]] == ["M-a", "M-b", "M-c", "M-d"]
    assert body["nextCursor"] is None
    _, one = await api.get("/v1/status/meter/M-a")
    assert body["meters"][0] == one  # the same live row as the meter's own status
    assert one["voltage"] == 231.0

    async def names(**query: str) -> list[str]:
        status, body = await api.get("/v1/status/meters", **query)
        assert status == 200, body
        return [m["meterId"] for m in body["meters"]]

    assert await names(online="true") == ["M-a", "M-b"]
    assert await names(online="false") == ["M-c", "M-d"]
    assert await names(linked="true") == ["M-c"]
    assert await names(linked="false", online="false") == ["M-d"]
    seen, cursor, pages = [], None, 0
    while True:
        status, body = await api.get(
            "/v1/status/meters", limit="3", **({"cursor": cursor} if cursor else {})
        )
        seen += [m["meterId"] for m in body["meters"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert (seen, pages) == (["M-a", "M-b", "M-c", "M-d"], 2)
    for bad, parameter in (
        ({"online": "yes"}, "online"),
        ({"linked": "1"}, "linked"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
    ):
        status, body = await api.get("/v1/status/meters", **bad)
        assert (status, body["error"]["parameter"]) == (400, parameter), bad
