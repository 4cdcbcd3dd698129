"""Closed enrolment (the default): only registered, active devices report; the readings of any
other are dead letters with the reason 'unknown device' (defence in depth behind the broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import aiomqtt

from gateway.settings import Settings
from tests.support import StartGateway, count, equals, query, wait_until


def reading() -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"kwhConsumedAc": 0.5, "voltage": 231, "timestamp": now}).encode()


async def history_of(database_url: str, name: str) -> int:
    sql = "SELECT count(*) FROM meter_reading JOIN meter USING (meter_id) WHERE name = %s"
    return await count(database_url, sql, name)


async def reason_for(database_url: str, name: str) -> list[str]:
    sql = "SELECT reason FROM dead_letter WHERE device_name = %s ORDER BY dead_letter_id"
    return [str(row[0]) for row in await query(database_url, sql, name)]


async def test_only_registered_active_devices_report_when_enrolment_is_closed(
    start_gateway: StartGateway, publisher: aiomqtt.Client, settings: Settings
) -> None:
    url = settings.database_url
    await start_gateway(enrolment="closed")
    await query(url, "INSERT INTO meter (name) VALUES ('ENR-KNOWN') RETURNING meter_id")
    await publisher.publish("fleet/meter/ENR-STRANGER", reading(), qos=1)
    await publisher.publish("fleet/meter/ENR-KNOWN", reading(), qos=1)

    await wait_until(lambda: equals(history_of(url, "ENR-KNOWN"), 1), what="known device stored")
    await wait_until(lambda: _has(reason_for(url, "ENR-STRANGER")), what="stranger refused")
    assert await reason_for(url, "ENR-STRANGER") == [
        "unknown device: meter 'ENR-STRANGER' is not registered"
    ]
    assert await count(url, "SELECT count(*) FROM meter WHERE name = 'ENR-STRANGER'") == 0

    await query(url, "UPDATE meter SET state = 'disabled' WHERE name = 'ENR-KNOWN' RETURNING 1")
    await publisher.publish("fleet/meter/ENR-KNOWN", reading(), qos=1)
    await wait_until(lambda: _has(reason_for(url, "ENR-KNOWN")), what="disabled device refused")
    assert await reason_for(url, "ENR-KNOWN") == ["unknown device: meter 'ENR-KNOWN' is disabled"]
    assert await history_of(url, "ENR-KNOWN") == 1


async def _has(value: object) -> bool:
    return bool(await value)  # type: ignore[misc]
