"""The database roles (docs/security.md): a gateway and an API connected as members of
fleetgate_gateway and fleetgate_api do their whole job, and nothing else; fleetgate_readonly
reads. The schema is applied by the superuser first, as its owner would."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from gateway.broker_sync import add_login
from gateway.database import apply_schema
from gateway.schema import SchemaRightsError
from gateway.settings import MqttAddress
from http_api.settings import Settings as ApiSettings
from http_api.tokens import revoke_token
from tests.http_helpers import Api, iso, meter_reading, vehicle_reading
from tests.services import Mosquitto
from tests.support import LoginAs, StartGateway, count, query, wait_until

pytest_plugins = ["tests.http_fixtures"]

NOW = datetime.now(UTC).replace(microsecond=0)
# One reading of each kind in history (partition and all), as a gateway would have left it.
_HISTORY = f"""
SELECT fleetgate_ensure_partition('meter_reading', '{NOW:%Y-%m-%d}');
SELECT fleetgate_ensure_partition('vehicle_reading', '{NOW:%Y-%m-%d}');
INSERT INTO meter (name) VALUES ('M-1');
INSERT INTO vehicle (name) VALUES ('EV-1');
INSERT INTO meter_reading VALUES ('{iso(NOW)}', 1000, 1, 230);
INSERT INTO vehicle_reading VALUES ('{iso(NOW)}', 900, 1, 50, 30);
INSERT INTO alert (device_kind, device_name, rule, raised_at, value, threshold, message)
VALUES ('vehicle', 'EV-1', 'batteryOverTemp', '{iso(NOW)}', 61, 55, 'hot');
"""
# What no service may do to history or to the schema.
_DESTRUCTIVE = (
    "DELETE FROM meter_reading",
    "DELETE FROM vehicle_reading",
    "UPDATE meter_reading SET voltage = 0",
    "DELETE FROM alert",
    "TRUNCATE meter_reading",
    "TRUNCATE dead_letter",
    "DROP TABLE meter_reading",
    "DROP TABLE vehicle_link",
    "ALTER TABLE meter ADD COLUMN note text",
    "CREATE TABLE meter_reading_copy (ts timestamptz)",
)


async def is_refused(database_url: str, sql: str) -> bool:
    """True if the database refuses ``sql`` for want of a right, False if it runs; any other
    error is raised."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        try:
            await conn.execute(sql.encode())
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


async def allowed_of(database_url: str, statements: tuple[str, ...]) -> list[str]:
    """Those of ``statements`` that the database lets run (each on its own connection)."""
    return [sql for sql in statements if not await is_refused(database_url, sql)]


async def _history(database_url: str) -> list[tuple[object, ...]]:
    return await query(
        database_url,
        "SELECT (SELECT count(*) FROM meter_reading), (SELECT count(*) FROM vehicle_reading),"
        " (SELECT count(*) FROM alert)",
    )


async def test_a_gateway_as_fleetgate_gateway_stores_readings_dead_letters_and_alerts(
    database_url: str,
    login_as: LoginAs,
    start_gateway: StartGateway,
    publisher: aiomqtt.Client,
) -> None:
    await apply_schema(database_url)
    await start_gateway(
        database_url=login_as(database_url, "fleetgate_gateway"), dead_letters_per_device=1
    )
    twenty_days_ago = NOW - timedelta(days=20)  # a day without a partition yet
    for at in (NOW - timedelta(minutes=2), twenty_days_ago):
        reading = json.dumps(meter_reading("M-1", at, 0.5))
        await publisher.publish("fleet/meter/M-1", reading, qos=1)
    hot = vehicle_reading("EV-1", NOW - timedelta(minutes=2), 0.4, temp=70)
    await publisher.publish("fleet/vehicle/EV-1", json.dumps(hot), qos=1)
    for _ in range(2):  # one kept, one past the cap of 1 a minute: counted
        await publisher.publish("fleet/meter/M-1", b"not JSON", qos=1)

    async def published(events: int) -> bool:
        sql = "SELECT count(*) FROM alert_event WHERE published_at IS NOT NULL"
        return await count(database_url, sql) == events

    await wait_until(lambda: published(1), what="the alert raised and published")
    cool = vehicle_reading("EV-1", NOW - timedelta(minutes=1), 0.4, temp=30)
    await publisher.publish("fleet/vehicle/EV-1", json.dumps(cool), qos=1)
    await wait_until(lambda: published(2), what="the alert cleared and published")

    partition = f"meter_reading_{twenty_days_ago:%Y%m%d}"
    assert await query(
        database_url, "SELECT relowner::regrole::text FROM pg_class WHERE relname = %s", partition
    ) == [("fleetgate_owner",)]
    assert await query(database_url, "SELECT count(*) FROM meter_reading") == [(2,)]
    assert await query(database_url, "SELECT count(*) FROM vehicle_reading") == [(2,)]
    assert await query(database_url, "SELECT count(*) FROM meter_daily") == [(2,)]
    assert await query(database_url, "SELECT readings FROM vehicle_hourly") == [(2,)]
    assert await query(database_url, "SELECT ts FROM meter") == [(NOW - timedelta(minutes=2),)]
    assert await query(database_url, "SELECT device_name FROM dead_letter") == [("M-1",)]
    assert await query(database_url, "SELECT dead_letters FROM dead_letter_overflow") == [(1,)]
    assert await query(
        database_url, "SELECT rule, cleared_at IS NOT NULL, clear_value FROM alert"
    ) == [("batteryOverTemp", True, 30.0)]


async def test_the_gateway_role_cannot_delete_history_drop_or_make_other_partitions(
    database_url: str, login_as: LoginAs
) -> None:
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(_HISTORY.encode())
    gateway_url = login_as(database_url, "fleetgate_gateway")
    before = await _history(database_url)
    assert (
        await allowed_of(
            gateway_url,
            (
                *_DESTRUCTIVE,
                # the registry is the API's: a gateway neither enables a device nor sets its login
                "UPDATE meter SET state = 'active'",
                "UPDATE vehicle SET secret_hash = NULL",
                "INSERT INTO meter (name, state) VALUES ('M-2', 'active')",
                "DELETE FROM meter",
                "INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from) VALUES (1, 1, now())",
                "SELECT token_hash FROM api_token",
                "SELECT secret_hash FROM broker_login",
                # partitions of the history tables only, through the function only
                "SELECT fleetgate_ensure_partition('dead_letter', current_date)",
                "SELECT fleetgate_ensure_partition('alert', current_date)",
                "CREATE TEMP TABLE meter_reading (ts timestamptz) PARTITION BY RANGE (ts);"
                " SELECT fleetgate_ensure_partition('pg_temp.meter_reading', current_date)",
            ),
        )
        == []
    )
    assert await _history(database_url) == before
    # A repair (apply_schema(force=True), after a permanent error) is refused as a database
    # error, which the writer logs, saying who can repair.
    with pytest.raises(SchemaRightsError, match=r"python -m gateway migrate --repair"):
        await apply_schema(gateway_url, force=True)
    assert issubclass(SchemaRightsError, psycopg.Error)


@pytest.fixture
async def api_settings(database_url: str, mosquitto: Mosquitto, login_as: LoginAs) -> ApiSettings:
    """The API, its tokens included, connects as a member of fleetgate_api; the schema was
    applied by its owner."""
    await apply_schema(database_url)
    return ApiSettings.from_env({}).replace(
        database_url=login_as(database_url, "fleetgate_api"), mqtt=MqttAddress.parse(mosquitto.url)
    )


async def test_the_api_as_fleetgate_api_manages_devices_links_tokens_but_not_history(
    api: Api, database_url: str
) -> None:
    """The ``api`` fixture made its three tokens as fleetgate_api already."""
    api_url = api.settings.database_url
    registry_calls = (
        ("POST", "/v1/devices", {"kind": "vehicle", "id": "EV-1"}, 201),
        ("POST", "/v1/devices", {"kind": "meter", "id": "M-1"}, 201),
        ("PATCH", "/v1/devices/meter/M-1", {"site": "Depot"}, 200),
        ("POST", "/v1/devices/meter/M-1/rotate-secret", b"", 200),
        ("POST", "/v1/devices", {"kind": "meter", "id": "M-9"}, 201),
        ("POST", "/v1/devices/meter/M-9/disable", b"", 200),
        ("DELETE", "/v1/devices/meter/M-9", b"", 200),
    )
    for method, path, body, expected in registry_calls:
        status, answer = await api.send(method, path, body, token="admin")
        assert status == expected, (method, path, answer)
    link = {"vehicleId": "EV-1", "meterId": "M-1", "since": iso(NOW - timedelta(hours=1))}
    assert (await api.send("POST", "/v1/links", link))[0] == 201
    assert (await api.send("DELETE", "/v1/links/EV-1", b""))[0] == 200
    assert (await api.get("/v1/status/overview"))[0] == 200
    await add_login(api_url, "engineer-1", "engineer")  # broker_sync's login command
    token_id = (await query(database_url, "SELECT token_id FROM api_token WHERE name = 'ops'"))[0]
    assert await revoke_token(api_url, token_id[0])
    assert await query(
        database_url,
        "SELECT (SELECT site FROM meter WHERE name = 'M-1'), (SELECT count(*) FROM vehicle_link"
        " WHERE valid_to IS NOT NULL), (SELECT role FROM broker_login), (SELECT count(*) FROM"
        " api_token WHERE revoked_at IS NOT NULL), (SELECT count(*) FROM meter)",
    ) == [("Depot", 1, "engineer", 1, 1)]

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(_HISTORY.replace("'M-1'", "'M-2'").replace("'EV-1'", "'EV-2'").encode())
    before = await _history(database_url)
    assert (
        await allowed_of(
            api_url,
            (
                *_DESTRUCTIVE,
                f"INSERT INTO meter_reading VALUES ('{iso(NOW)}', 1, 1, 230)",
                "UPDATE alert SET cleared_at = now()",
                "INSERT INTO dead_letter (received_at, topic, reason, payload, payload_bytes)"
                " VALUES (now(), 't', 'r', 'x', 1)",
                "SELECT fleetgate_ensure_partition('meter_reading', current_date + 60)",
            ),
        )
        == []
    )
    assert await _history(database_url) == before


async def test_the_readonly_role_reads_everything_but_credentials_and_writes_nothing(
    database_url: str, login_as: LoginAs
) -> None:
    await apply_schema(database_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(_HISTORY.encode())
    readonly_url = login_as(database_url, "fleetgate_readonly")
    assert await query(
        readonly_url,
        "SELECT m.name, r.consumed_ac_mwh, (SELECT count(*) FROM alert), (SELECT count(*) FROM"
        " meter_hourly), (SELECT count(*) FROM dead_letter) FROM meter_reading r JOIN meter m"
        " USING (meter_id)",
    ) == [("M-1", 1000, 1, 0, 0)]
    assert await query(readonly_url, "SELECT name, state FROM vehicle") == [("EV-1", "active")]
    assert (
        await allowed_of(
            readonly_url,
            (
                *_DESTRUCTIVE,
                "INSERT INTO vehicle_link (vehicle_id, meter_id, valid_from) VALUES (1, 1, now())",
                "INSERT INTO meter (name) VALUES ('M-2')",
                "UPDATE meter SET site = 'x'",
                "INSERT INTO api_token (scope, token_hash) VALUES ('admin', 'x')",
                "SELECT token_hash FROM api_token",
                "SELECT secret_hash FROM broker_login",
                "SELECT fleetgate_ensure_partition('meter_reading', current_date + 60)",
            ),
        )
        == []
    )
