"""What the demo prints (used by ``scripts/stack.py``): what runs where, the tokens and logins
it made, commands to paste that work as printed, and a line of counts every few seconds."""

from __future__ import annotations

import shlex
import urllib.parse
from typing import TYPE_CHECKING, Any

import psycopg
from stack_security import SERVICE_LOGINS

if TYPE_CHECKING:
    from stack import Stack

STATUS_INTERVAL_S = 10.0
# What each token the demo prints is for (docs/http-api.md#tokens-and-scopes).
TOKEN_USES = {
    "read": "dashboards: every GET but the registry",
    "admin": "also writes: links, ingestion; and the device registry",
}
COUNTS_SQL = """
SELECT (SELECT count(*) FROM meter_reading), (SELECT count(*) FROM vehicle_reading),
       (SELECT count(*) FROM dead_letter)"""
# A vehicle reading for mosquitto_pub, stamped by the shell (double quotes: $(date) runs).
_READING = (
    '"{\\"soc\\":50,\\"kwhDeliveredDc\\":0.5,\\"batteryTemp\\":30,'
    '\\"timestamp\\":\\"$(date -u +%FT%TZ)\\"}"'
)


def query_one(database_url: str, sql: str) -> tuple[Any, ...] | None:
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            return conn.execute(sql.encode()).fetchone()
    except psycopg.Error:
        return None


def alert_subscription(stack: Stack) -> str:
    """A field engineer's mosquitto_sub for the alerts."""
    broker = stack.broker
    if broker is None:
        mqtt = urllib.parse.urlsplit(stack.mqtt_url)
        login = f" -u {shlex.quote(mqtt.username)} -P '<its password>'" if mqtt.username else ""
        return (
            f"mosquitto_sub -h {mqtt.hostname} -p {mqtt.port or 1883}{login} -t 'fleet/alerts/#' -v"
        )
    return (
        f"mosquitto_sub -h 127.0.0.1 -p {broker.tls_port} --cafile {broker.ca_file} "
        f"-u {SERVICE_LOGINS['engineer']} -P {shlex.quote(broker.secrets['engineer'])} "
        "-t 'fleet/alerts/#' -v"
    )


def suggestions(stack: Stack, vehicle: str | None) -> list[str]:
    """Commands to paste, each working as printed."""
    out: list[str] = []
    read, admin, api = stack.tokens.get("read"), stack.tokens.get("admin"), stack.api_url
    if api and read:
        path = f"/v1/analytics/performance/{vehicle or '<vehicleId>'}"
        out.append(
            f"  curl -H 'Authorization: Bearer {read}' {api}{path}   # 24 h efficiency of a vehicle"
        )
    if api and admin:
        out.append(
            f"  curl -H 'Authorization: Bearer {admin}' '{api}/v1/devices?kind=meter'"
            "   # the registry (admin token)"
        )
    reads = "reads nothing else" if stack.broker else "MQTT_URL's login"
    out.append(f"  {alert_subscription(stack)}   # alerts, as a field engineer ({reads})")
    if stack.private_database:
        out.append(
            f"  psql {stack.database.readonly} -c 'SELECT * FROM vehicle'   # read-only login"
        )
    broker = stack.broker
    if api and admin and broker:
        out += [
            "A device of your own: register it (its secret is in the answer), then publish as it:",
            f"  curl -H 'Authorization: Bearer {admin}' -H 'Content-Type: application/json' "
            f"""-d '{{"kind":"vehicle","id":"EV-MINE"}}' {api}/v1/devices""",
            f"  mosquitto_pub -h 127.0.0.1 -p {broker.tls_port} --cafile {broker.ca_file} "
            f"-u vehicle/EV-MINE -P '<its secret>' -q 1 -t fleet/vehicle/EV-MINE -m {_READING}",
        ]
    return out


def print_summary(stack: Stack, vehicle: str | None, startup_s: float) -> None:
    out = [f"\nfleetgate demo is running ({startup_s:.1f} s to start); Ctrl-C stops everything.\n"]
    out += [f"  {line}" for line in stack.lines]
    tokens = stack.tokens.items()
    out += [f"  {scope} token {token}   ({TOKEN_USES[scope]})" for scope, token in tokens]
    if stack.api_url and "read" in stack.tokens:
        # In the fragment, which a browser never sends; the page keeps it in the tab's storage.
        out.append(f"  dashboard  {stack.api_url}/#token={stack.tokens['read']}   (in a browser)")
    out += ["\nTry:", *suggestions(stack, vehicle)]
    if stack.simulator and vehicle is None:
        out.append("\nNo vehicle reading has arrived yet: see the simulator's log.")
    print("\n".join(out) + "\n", flush=True)


def print_status(stack: Stack, previous: list[int]) -> None:
    row = query_one(stack.database.readonly, COUNTS_SQL)
    if row is None:
        print("readings: database unreachable", flush=True)
        return
    meters, vehicles, dead = (int(value) for value in row)
    added = meters + vehicles - sum(previous)
    previous[:] = [meters, vehicles]
    print(
        f"readings stored: {meters} meter, {vehicles} vehicle (+{added} in "
        f"{STATUS_INTERVAL_S:.0f} s), dead letters: {dead}",
        flush=True,
    )
