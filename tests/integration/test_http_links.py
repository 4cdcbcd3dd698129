"""Vehicle-to-meter links: created, listed, reassigned and ended, with their time spans."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aiomqtt

from tests.http_helpers import Api, iso, meter_reading, vehicle_reading, write_readings
from tests.support import StartGateway, count, wait_until

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)


async def _devices(database_url: str) -> None:
    at = NOW - timedelta(minutes=1)
    await write_readings(
        database_url,
        [
            vehicle_reading("EV-1", at, 1),
            vehicle_reading("EV-2", at, 1),
            meter_reading("M-1", at, 1),
            meter_reading("M-2", at, 1),
        ],
    )


async def test_link_reassign_and_end_keep_history(api: Api, database_url: str) -> None:
    await _devices(database_url)
    t1, t2 = NOW - timedelta(hours=5), NOW - timedelta(hours=2)
    status, link = await api.send(
        "POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-1", "since": iso(t1)}
    )
    assert status == 201
    assert link == {"vehicleId": "EV-1", "meterId": "M-1", "validFrom": iso(t1), "validTo": None}
    again = {"vehicleId": "EV-1", "meterId": "M-1"}
    assert (await api.send("POST", "/v1/links", again))[0] == 200  # already so: unchanged
    status, _ = await api.send(
        "POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-2", "since": iso(t2)}
    )
    assert status == 201
    status, body = await api.get("/v1/links/EV-1")
    assert status == 200
    assert body["current"]["meterId"] == "M-2"
    assert [(h["meterId"], h["validFrom"], h["validTo"]) for h in body["history"]] == [
        ("M-2", iso(t2), None),
        ("M-1", iso(t1), iso(t2)),
    ]
    _, listing = await api.get("/v1/links")
    assert [(x["vehicleId"], x["meterId"]) for x in listing["links"]] == [("EV-1", "M-2")]
    status, ended = await api.send("DELETE", "/v1/links/EV-1", b"")
    assert status == 200
    assert ended["validTo"] is not None
    assert (await api.get("/v1/links"))[1]["links"] == []
    assert (await api.get("/v1/links/EV-1"))[1]["current"] is None
    status, body = await api.send("DELETE", "/v1/links/EV-1", b"")
    assert status == 404


async def test_a_meter_feeds_one_vehicle_at_a_time(api: Api, database_url: str) -> None:
    await _devices(database_url)
    assert (await api.send("POST", "/v1/links", {"vehicleId": "EV-1", "meterId": "M-1"}))[0] == 201
    status, body = await api.send("POST", "/v1/links", {"vehicleId": "EV-2", "meterId": "M-1"})
    assert (status, body["error"]["code"], body["error"]["parameter"]) == (
        409,
        "conflict",
        "meterId",
    )
    assert "EV-1" in body["error"]["message"]


async def test_link_bad_input(api: Api, database_url: str) -> None:
    await _devices(database_url)
    cases = [
        (b"{not json", 400, "invalidBody", None),
        (b'{"vehicleId": "EV-1"}', 400, "invalidBody", None),
        (b'{"vehicleId": "EV-1", "meterId": "M-1", "colour": 1}', 400, "invalidBody", None),
        (b'{"vehicleId": "EV 1", "meterId": "M-1"}', 400, "invalidParameter", "vehicleId"),
        (b'{"vehicleId": "EV-9", "meterId": "M-1"}', 404, "notFound", "vehicleId"),
        (b'{"vehicleId": "EV-1", "meterId": "M-9"}', 404, "notFound", "meterId"),
        (
            b'{"vehicleId": "EV-1", "meterId": "M-1", "since": "yesterday"}',
            400,
            "invalidParameter",
            "since",
        ),
        (
            b'{"vehicleId": "EV-1", "meterId": "M-1", "since": "%s"}'
            % iso(NOW + timedelta(hours=1)).encode(),
            400,
            "invalidParameter",
            "since",
        ),
    ]
    for body, status, code, parameter in cases:
        got_status, got = await api.send("POST", "/v1/links", body)
        assert (got_status, got["error"]["code"], got["error"].get("parameter")) == (
            status,
            code,
            parameter,
        ), body
    assert (await api.get("/v1/links/EV-9"))[0] == 404
    assert (await api.get("/v1/links/EV%201"))[0] == 400


async def test_a_new_link_cannot_begin_before_the_current_one(api: Api, database_url: str) -> None:
    await _devices(database_url)
    since = iso(NOW - timedelta(hours=1))
    link = {"vehicleId": "EV-1", "meterId": "M-1", "since": since}
    assert (await api.send("POST", "/v1/links", link))[0] == 201
    earlier = {"vehicleId": "EV-1", "meterId": "M-2", "since": iso(NOW - timedelta(hours=2))}
    status, body = await api.send("POST", "/v1/links", earlier)
    assert (status, body["error"]["parameter"]) == (409, "since")


async def test_a_link_between_registered_devices_made_before_they_report_is_exact(
    api: Api, database_url: str, start_gateway: StartGateway, publisher: aiomqtt.Client
) -> None:
    """Provisioned, linked, then reporting: efficiency over the link is exact from the first
    reading (no 404 for a device that has not reported yet)."""
    for device in ({"kind": "vehicle", "id": "EV-new"}, {"kind": "meter", "id": "M-new"}):
        assert (await api.send("POST", "/v1/devices", device, token="admin"))[0] == 201
    since = NOW - timedelta(hours=1)
    link = {"vehicleId": "EV-new", "meterId": "M-new", "since": iso(since)}
    status, body = await api.send("POST", "/v1/links", link)
    assert (status, body["validFrom"]) == (201, iso(since)), body
    await start_gateway()
    ac, dc = [1.234567, 2.5, 0.000001], [1.1, 2.2, 0.000001]
    for n, (ac_kwh, dc_kwh) in enumerate(zip(ac, dc, strict=True)):
        at = NOW - timedelta(minutes=30 - n)
        meter = meter_reading("M-new", at, ac_kwh)
        vehicle = vehicle_reading("EV-new", at, dc_kwh)
        await publisher.publish("fleet/meter/M-new", json.dumps(meter).encode(), qos=1)
        await publisher.publish("fleet/vehicle/EV-new", json.dumps(vehicle).encode(), qos=1)

    async def stored() -> bool:
        readings = (
            "SELECT (SELECT count(*) FROM meter_reading) + (SELECT count(*) FROM vehicle_reading)"
        )
        return await count(database_url, readings) == 6

    await wait_until(stored, what="the six readings")
    status, figures = await api.get(
        "/v1/analytics/performance/EV-new", **{"from": iso(since), "to": iso(datetime.now(UTC))}
    )
    assert status == 200, figures
    ac_mwh, dc_mwh = 1_234_567 + 2_500_000 + 1, 1_100_000 + 2_200_000 + 1
    # kWh to the Wh and ratios to 4 decimals, of exact integer mWh on both sides
    assert (figures["totalAc"], figures["dcWhileLinked"]) == (3.735, 3.3)
    assert figures["efficiency"] == round(dc_mwh / ac_mwh, 4)
    assert figures["readings"] == {"ac": 3, "dc": 3}


async def test_current_links_come_page_by_page(api: Api, database_url: str) -> None:
    at = NOW - timedelta(minutes=1)
    pairs = [(f"EV-{n:02d}", f"M-{n:02d}") for n in range(5)]
    await write_readings(
        database_url,
        [
            reading
            for v, m in pairs
            for reading in (vehicle_reading(v, at, 1), meter_reading(m, at, 1))
        ],
    )
    for vehicle, meter in pairs:
        link = {"vehicleId": vehicle, "meterId": meter}
        assert (await api.send("POST", "/v1/links", link))[0] == 201
    status, everything = await api.get("/v1/links")
    assert status == 200
    assert [x["vehicleId"] for x in everything["links"]] == [v for v, _ in pairs]
    assert everything["nextCursor"] is None
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        status, page = await api.get("/v1/links", **query)
        assert status == 200, page
        assert len(page["links"]) <= 2
        seen += [x["vehicleId"] for x in page["links"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [v for v, _ in pairs]
    for bad, parameter in (({"limit": "1001"}, "limit"), ({"cursor": "%%%"}, "cursor")):
        status, body = await api.get("/v1/links", **bad)
        assert (status, body["error"]["parameter"]) == (400, parameter)
