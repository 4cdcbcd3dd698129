"""Acknowledging an alert (POST /v1/alerts/{alertId}/ack): who and when, kept in its history,
published to its topic; and one vocabulary on MQTT and over HTTP. Through the real app, a real
gateway, broker and subscriber."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from gateway.settings import Settings
from http_api.settings import Settings as ApiSettings
from tests.alert_helpers import AlertListener, clear_retained_alerts, listening
from tests.http_helpers import Api, iso, serving
from tests.integration.test_http_alerts import seed_alerts
from tests.services import Mosquitto
from tests.support import LoginAs, StartGateway, count, query, wait_until

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(alert_gather_s=0.05)


@pytest.fixture(autouse=True)
async def _clear_retained_alerts(mosquitto: Mosquitto) -> AsyncIterator[None]:
    yield
    await clear_retained_alerts(mosquitto)


def _hot(at: datetime, temp: float) -> bytes:
    reading = {"soc": 50, "kwhDeliveredDc": 0.0, "batteryTemp": temp, "timestamp": iso(at)}
    return json.dumps(reading).encode()


def _messages(
    engineer: AlertListener, alert_id: str, device: str = "EV-ack"
) -> list[dict[str, Any]]:
    """The device's messages of that alert: every test database numbers its alerts from 1, and
    the shared broker may still hold another test's retained alert 1."""
    return [
        event
        for event in engineer.events
        if event["alertId"] == alert_id and event["deviceId"] == device
    ]


async def _history(database_url: str, alert_id: str) -> list[tuple[str, bool]]:
    return await query(
        database_url,
        "SELECT state, published_at IS NOT NULL FROM alert_event WHERE alert_id = %s"
        " ORDER BY event_id",
        int(alert_id),
    )


async def test_an_acknowledgement_is_kept_published_and_answered_once(
    api: Api,
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
    mosquitto: Mosquitto,
    database_url: str,
) -> None:
    topic = "fleet/vehicle/EV-ack"
    async with listening(mosquitto) as engineer:
        await start_gateway()
        await publisher.publish(topic, _hot(NOW - timedelta(minutes=2), 60), qos=1)

        async def raised() -> bool:
            return bool(engineer.of("EV-ack", "batteryOverTemp"))

        await wait_until(raised, what="the raise on MQTT")
        # Only this device's: the shared broker may hold other tests' retained alerts.
        [message] = [event for event in engineer.events if event["deviceId"] == "EV-ack"]
        alert_id = message["alertId"]
        _, listing = await api.get("/v1/alerts", deviceId="EV-ack")
        assert listing["alerts"] == [message]  # one vocabulary, the same fields, both ways
        assert (message["state"], message["acknowledgedAt"]) == ("raised", None)

        status, acknowledged = await api.send(
            "POST", f"/v1/alerts/{alert_id}/ack", {"note": "Bay 4: fan replaced"}
        )
        assert status == 200, acknowledged
        assert acknowledged["state"] == "raised"
        assert acknowledged["acknowledgedAt"] is not None
        assert acknowledged["acknowledgedNote"] == "Bay 4: fan replaced"
        [(token_id,)] = await query(
            database_url, "SELECT token_id FROM api_token WHERE name = 'ops'"
        )
        assert acknowledged["acknowledgedBy"] == f"ops (token {token_id})"

        # The retained raise, again, now acknowledged: engineers see who took it.
        async def republished() -> bool:
            return len(_messages(engineer, alert_id)) == 2

        await wait_until(republished, what="the acknowledgement on MQTT")
        assert _messages(engineer, alert_id)[-1] == acknowledged
        assert await _history(database_url, alert_id) == [
            ("raised", True),
            ("acknowledged", True),
        ]

        # Again, without a note: the first acknowledgement, unchanged, and nothing published.
        status, again = await api.send("POST", f"/v1/alerts/{alert_id}/ack", b"", token="admin")
        assert (status, again) == (200, acknowledged)
        assert len(await _history(database_url, alert_id)) == 2

        _, unacknowledged = await api.get("/v1/alerts", state="raised", acknowledged="false")
        assert unacknowledged["alerts"] == []
        _, taken = await api.get("/v1/alerts", acknowledged="true")
        assert taken["alerts"] == [acknowledged]

    # A subscriber arriving now gets the retained alert as acknowledged.
    async with listening(mosquitto) as late:
        await late.barrier()
        assert _messages(late, alert_id) == [acknowledged]
        # Cleared later, it still says who acknowledged it.
        await publisher.publish(topic, _hot(NOW - timedelta(minutes=1), 30), qos=1)

        async def cleared() -> bool:
            return late.of("EV-ack", "batteryOverTemp") == ["raised", "cleared"]

        await wait_until(cleared, what="the clear")
        cleared_message = _messages(late, alert_id)[-1]
        assert cleared_message["acknowledgedBy"] == acknowledged["acknowledgedBy"]
    # Acknowledged before it cleared: asking again still answers the first acknowledgement.
    status, after_clear = await api.send("POST", f"/v1/alerts/{alert_id}/ack", b"")
    assert (status, after_clear) == (200, cleared_message)


async def test_cleared_unknown_and_malformed_alerts_and_bodies(api: Api, database_url: str) -> None:
    cleared, raised = await seed_alerts(
        database_url,
        [
            {
                "device_name": "EV-1",
                "rule": "batteryOverTemp",
                "raised_at": NOW - timedelta(hours=2),
                "cleared_at": NOW - timedelta(hours=1),
                "clear_value": 40.0,
            },
            {"device_name": "EV-2", "rule": "batteryOverTemp", "raised_at": NOW},
        ],
    )
    status, body = await api.send("POST", f"/v1/alerts/{cleared}/ack", b"")
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body = await api.send("POST", "/v1/alerts/987654321/ack", b"")
    assert (status, body["error"]["code"], body["error"]["parameter"]) == (
        404,
        "notFound",
        "alertId",
    )
    for bad in ("abc", "0", "012", "-1", "9223372036854775808", "1%0A"):
        status, body = await api.send("POST", f"/v1/alerts/{bad}/ack", b"")
        assert (status, body["error"]["parameter"]) == (400, "alertId"), bad
    too_long = b'{"note": "' + b"x" * 501 + b'"}'
    bad_bodies = (
        b'{"note": 5}',
        b'{"colour": 1}',
        b"[1]",
        b"{not json",
        too_long,
        b'{"note": [1]}',
    )
    for bad_body in bad_bodies:
        status, body = await api.send("POST", f"/v1/alerts/{raised}/ack", bad_body)
        assert (status, body["error"]["code"]) == (400, "invalidBody"), bad_body
    status, body = await api.send("POST", f"/v1/alerts/{raised}/ack", b"", token="read")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, _ = await api.send("POST", f"/v1/alerts/{raised}/ack", b"", token=None)
    assert status == 401
    assert await count(database_url, "SELECT count(*) FROM alert_event") == 0  # none of it
    assert (
        await count(database_url, "SELECT count(*) FROM alert WHERE acknowledged_at IS NOT NULL")
        == 0
    )


async def test_the_api_role_may_acknowledge(
    api_settings: ApiSettings, login_as: LoginAs, database_url: str
) -> None:
    """fleetgate_api writes an acknowledgement and its event, nothing else of an alert
    (tests/integration/test_database_roles.py: it cannot clear one)."""
    [alert_id] = await seed_alerts(
        database_url, [{"device_name": "EV-1", "rule": "batteryOverTemp", "raised_at": NOW}]
    )
    as_role = api_settings.replace(database_url=login_as(database_url, "fleetgate_api"))
    async with serving(as_role) as api:
        status, body = await api.send("POST", f"/v1/alerts/{alert_id}/ack", b"")
    assert status == 200, body
    assert body["acknowledgedBy"].startswith("ops (token ")
    assert await _history(database_url, alert_id) == [("acknowledged", False)]
