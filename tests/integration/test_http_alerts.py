"""GET /v1/alerts: alert history with filters and keyset pages, through the real app and
database; one alert raised by a real gateway from a reading published on MQTT."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg

from gateway.alert_rules import RULES
from gateway.database import apply_schema
from http_api.params import encode_cursor
from tests.http_helpers import Api, iso
from tests.support import StartGateway, count, wait_until

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)


async def seed_alerts(database_url: str, alerts: list[dict[str, Any]]) -> list[str]:
    """Insert alerts as the gateway stores them; returns their ids, as the API spells them."""
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        ids = []
        for alert in alerts:
            row = {
                "device_kind": "vehicle",
                "value": 60.0,
                "threshold": 55.0,
                "cleared_at": None,
                "clear_value": None,
                "message": "stored message",
            } | alert
            cur = await conn.execute(
                """INSERT INTO alert (device_kind, device_name, rule, raised_at, cleared_at, value,
                                      threshold, clear_value, message)
                   VALUES (%(device_kind)s, %(device_name)s, %(rule)s, %(raised_at)s,
                           %(cleared_at)s, %(value)s, %(threshold)s, %(clear_value)s, %(message)s)
                   RETURNING alert_id""",
                row,
            )
            found = await cur.fetchone()
            assert found is not None
            ids.append(str(found[0]))
    return ids


def ids_of(body: dict[str, Any]) -> list[str]:
    return [alert["alertId"] for alert in body["alerts"]]


async def test_a_gateway_alert_from_a_hot_battery_is_listed_raised(
    api: Api,
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    database_url: str,
) -> None:
    vehicle = f"EV-hot-{uuid.uuid4().hex[:6]}"
    await start_gateway()
    reading = {"soc": 50, "kwhDeliveredDc": 0.0, "batteryTemp": 60.0, "timestamp": iso(NOW)}
    try:
        await publisher.publish(f"fleet/vehicle/{vehicle}", json.dumps(reading).encode(), qos=1)

        async def listed() -> bool:
            _, body = await api.get("/v1/alerts", state="raised", deviceId=vehicle)
            return any(a["rule"] == "batteryOverTemp" for a in body["alerts"])

        await wait_until(listed, what="the raised alert in GET /v1/alerts")
        _, body = await api.get("/v1/alerts", state="raised", rule="batteryOverTemp")
        [alert] = [a for a in body["alerts"] if a["deviceId"] == vehicle]
        assert alert["state"] == "raised"
        assert alert["deviceKind"] == "vehicle"
        assert (alert["value"], alert["threshold"]) == (60.0, 55.0)
        assert (alert["clearedAt"], alert["clearValue"]) == (None, None)
        assert alert["raisedAt"].endswith("Z")
        assert alert["message"] == (
            f"Battery over temperature on {vehicle}: 60.0 °C, threshold 55.0 °C."
        )
        _, cleared = await api.get("/v1/alerts", state="cleared", deviceId=vehicle)
        assert cleared == {"alerts": [], "nextCursor": None}
    finally:
        # The gateway leaves the alert retained on the shared broker: remove it once published.
        await wait_until(
            lambda: _published(database_url), what="the alert published before cleaning up"
        )
        topic = f"fleet/alerts/vehicle/{vehicle}/batteryOverTemp"
        await publisher.publish(topic, b"", qos=1, retain=True)


async def _published(database_url: str) -> bool:
    unpublished = "SELECT count(*) FROM alert_event WHERE published_at IS NULL"
    return await count(database_url, unpublished) == 0


async def test_each_filter_and_the_shape_of_an_alert(api: Api, database_url: str) -> None:
    day = timedelta(days=1)
    active_hot, cleared_hot, offline_meter, old_hot = await seed_alerts(
        database_url,
        [
            {"device_name": "EV-1", "rule": "batteryOverTemp", "raised_at": NOW - 1 * day},
            {
                "device_name": "EV-1",
                "rule": "batteryOverTemp",
                "raised_at": NOW - 2 * day,
                "cleared_at": NOW - 2 * day + timedelta(minutes=20),
                "value": 58.5,
                "clear_value": 49.0,
            },
            {
                "device_kind": "meter",
                "device_name": "M-1",
                "rule": "deviceOffline",
                "raised_at": NOW - 3 * day,
                "value": 900,
                "threshold": 300,
            },
            {
                "device_name": "EV-2",
                "rule": "batteryOverTemp",
                "raised_at": NOW - 40 * day,  # older than any default window: still listed
                "cleared_at": NOW - 39 * day,
                "clear_value": 45.0,
            },
        ],
    )
    status, body = await api.get("/v1/alerts")
    assert status == 200
    assert ids_of(body) == [active_hot, cleared_hot, offline_meter, old_hot]
    assert body["nextCursor"] is None
    assert body["alerts"][1] == {
        "alertId": cleared_hot,
        "rule": "batteryOverTemp",
        "state": "cleared",
        "deviceId": "EV-1",
        "deviceKind": "vehicle",
        "value": 58.5,
        "threshold": 55.0,
        "clearValue": 49.0,
        "raisedAt": iso(NOW - 2 * day),
        "clearedAt": iso(NOW - 2 * day + timedelta(minutes=20)),
        "acknowledgedAt": None,
        "acknowledgedBy": None,
        "acknowledgedNote": None,
        "message": "Battery over temperature on EV-1 cleared (49.0 °C now); worst was 58.5 °C.",
    }
    assert body["alerts"][2]["deviceKind"] == "meter"
    assert (body["alerts"][2]["clearedAt"], body["alerts"][2]["clearValue"]) == (None, None)

    async def listed(**query: str) -> list[str]:
        status, body = await api.get("/v1/alerts", **query)
        assert status == 200, body
        return ids_of(body)

    assert await listed(state="raised") == [active_hot, offline_meter]
    assert await listed(state="active") == [active_hot, offline_meter]  # deprecated: raised
    assert await listed(state="cleared") == [cleared_hot, old_hot]
    assert await listed(deviceId="EV-1") == [active_hot, cleared_hot]
    assert await listed(deviceId="M-1", state="cleared") == []
    assert await listed(deviceId="EV-404") == []
    assert await listed(rule="deviceOffline") == [offline_meter]
    assert await listed(rule="batteryOverTemp", state="cleared") == [cleared_hot, old_hot]
    assert await listed(rule="lowEfficiency") == []
    # from is inclusive, to exclusive, both on raisedAt
    assert await listed(**{"from": iso(NOW - 2 * day)}) == [active_hot, cleared_hot]
    assert await listed(to=iso(NOW - 2 * day)) == [offline_meter, old_hot]
    window = {"from": iso(NOW - 3 * day), "to": iso(NOW - 1 * day)}
    assert await listed(**window) == [cleared_hot, offline_meter]
    assert await listed(**window, state="raised", deviceId="M-1") == [offline_meter]
    # Any offset is accepted and read as UTC.
    assert await listed(**{"from": (NOW - 2 * day).astimezone().isoformat()}) == [
        active_hot,
        cleared_hot,
    ]


async def test_pages_newest_first_without_repeats_or_gaps(api: Api, database_url: str) -> None:
    # 13 alerts, 5 of them raised in one evaluation round (the same raisedAt): the alert id
    # orders those, and a page boundary falls among them.
    round_at = NOW - timedelta(hours=3)
    alerts = [
        {"device_name": f"EV-{i:02d}", "rule": "deviceOffline", "raised_at": round_at}
        for i in range(5)
    ]
    alerts += [
        {
            "device_name": f"EV-{i:02d}",
            "rule": "batteryOverTemp",
            "raised_at": NOW - timedelta(hours=i),
            "cleared_at": None if i % 2 else NOW - timedelta(hours=i, minutes=-10),
        }
        for i in range(8)
    ]
    ids = await seed_alerts(database_url, alerts)
    everything = ids_of((await api.get("/v1/alerts"))[1])
    assert sorted(everything) == sorted(ids)
    expected_round = [ids[4], ids[3], ids[2], ids[1], ids[0]]  # same time: higher id first
    start = everything.index(ids[4])
    assert everything[start : start + 5] == expected_round

    async def all_pages(limit: str, **query: str) -> tuple[list[str], int]:
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page_query = query | {"limit": limit} | ({"cursor": cursor} if cursor else {})
            status, body = await api.get("/v1/alerts", **page_query)
            assert status == 200, body
            assert len(body["alerts"]) <= int(limit)
            seen += ids_of(body)
            pages += 1
            cursor = body["nextCursor"]
            if cursor is None:
                return seen, pages

    assert await all_pages("4") == (everything, 4)
    assert await all_pages("13") == (everything, 1)  # exactly one page: no empty page after it
    assert await all_pages("1") == (everything, 13)
    raised = ids_of((await api.get("/v1/alerts", state="raised"))[1])
    assert len(raised) == 9
    assert await all_pages("2", state="raised") == (raised, 5)


async def test_bad_parameters_are_named(api: Api) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"state": "open"}, "state"),
        ({"state": ""}, "state"),
        ({"rule": "tooHot"}, "rule"),
        ({"deviceId": "bad id!"}, "deviceId"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-02-09T08:00:00"}, "to"),  # no offset
        ({"from": iso(NOW), "to": iso(NOW - timedelta(hours=1))}, "from"),
        ({"from": iso(NOW), "to": iso(NOW)}, "from"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
        ({"cursor": encode_cursor("EV-1")}, "cursor"),  # a vehicle list's cursor
        ({"cursor": encode_cursor('["2026-02-09T08:00:00", 1]')}, "cursor"),  # no offset
        ({"cursor": encode_cursor('["2026-02-09T08:00:00Z", 0]')}, "cursor"),  # no such id
        ({"cursor": encode_cursor('["2026-02-09T08:00:00Z", 1e30]')}, "cursor"),
    ]
    for query, parameter in cases:
        status, body = await api.get("/v1/alerts", **query)
        assert status == 400, (query, body)
        assert body["error"]["code"] == "invalidParameter"
        assert body["error"]["parameter"] == parameter, (query, body)
    _, body = await api.get("/v1/alerts", rule="tooHot")
    assert all(rule in body["error"]["message"] for rule in RULES)


async def test_alerts_need_a_token(api: Api) -> None:
    status, body = await api.get("/v1/alerts", token=None)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, _ = await api.get("/v1/alerts", token="fgt_unknown")
    assert status == 401
    assert (await api.get("/v1/alerts", token="write"))[0] == 200  # write includes read
