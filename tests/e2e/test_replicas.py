"""Gateway replicas: several ``python -m gateway`` processes with one environment share the
broker sessions (GATEWAY_SESSIONS) and reorganise when one dies, stops or joins; every reading
is stored once, and alerts are judged by one of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import pytest

from gateway.broker import session_subscriptions
from gateway.broker_logins import Login, device_username, hash_secret
from gateway.broker_sync import SyncSettings, reload_broker, session_usernames, write_files
from gateway.database import apply_schema
from gateway.replicas import CHANNEL, MAX_SESSIONS, Census, may_take, namespace, share, to_release
from gateway.settings import MqttAddress, Settings
from http_api.settings import Settings as ApiSettings
from tests.http_helpers import Api, serving
from tests.services import Mosquitto
from tests.support import GatewayProcess, LoginAs, count, query, wait_until

pytest_plugins = ["tests.http_fixtures"]

START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=6)
DEVICES = 100


def reading(device: int, minute: int) -> bytes:
    at = START + timedelta(minutes=minute)
    return json.dumps(
        {
            "kwhConsumedAc": 0.25,
            "voltage": 230,
            "timestamp": at.isoformat().replace("+00:00", "Z"),
        }
    ).encode()


async def stream(port: int, minutes: range, rate: float, window: int = 200) -> int:
    """Publish DEVICES x ``minutes`` readings at QoS 1, ``window`` unacknowledged at most, about
    ``rate`` a second; returns how many."""
    messages = [
        (f"fleet/meter/M-{device}", reading(device, minute))
        for minute in minutes
        for device in range(DEVICES)
    ]
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    started = time.monotonic()
    sent = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}", max_inflight_messages=window
    ) as client:

        async def publish_some() -> None:
            nonlocal sent
            while not queue.empty():
                topic, payload = queue.get_nowait()
                await client.publish(topic, payload, qos=1)
                sent += 1
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

        async with asyncio.TaskGroup() as tasks:
            for number in range(window):
                tasks.create_task(publish_some(), name=f"publisher-{number}")
    return sent


async def session_owners(database_url: str, client_id: str) -> dict[int, str]:
    """Session -> the replica (application_name) holding its advisory lock."""
    rows = await query(
        database_url,
        "SELECT l.objid::int, a.application_name FROM pg_locks l"
        " JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
        " AND l.classid::bigint = %s AND l.objid < %s",
        namespace(client_id) % 2**32,
        MAX_SESSIONS,
    )
    return {int(session): str(name) for session, name in rows}


async def balanced(database_url: str, client_id: str, expected: list[str]) -> bool:
    return sorted((await session_owners(database_url, client_id)).values()) == expected


async def stored(database_url: str) -> int:
    return await count(database_url, "SELECT count(*) FROM meter_reading")


async def at_least(database_url: str, expected: int) -> bool:
    return await stored(database_url) >= expected


async def all_owned(database_url: str, client_id: str, sessions: int) -> bool:
    return len(await session_owners(database_url, client_id)) == sessions


def start_replica(
    settings: Settings, started: list[GatewayProcess], name: str, **env: str
) -> GatewayProcess:
    env = {"BATCH_SIZE": "200", "ALERTS_ENABLED": "false", **env}
    replica = GatewayProcess(settings, GATEWAY_REPLICA_NAME=name, **env)
    started.append(replica)
    replica.start()
    return replica


async def assert_stored_once(database_url: str, sent: int) -> None:
    await wait_until(lambda: at_least(database_url, sent), seconds=60, what="every reading")
    await asyncio.sleep(0.5)  # anything doubled would be counted in the rollups by now
    assert await stored(database_url) == sent
    assert await count(database_url, "SELECT sum(readings) FROM meter_hourly") == sent


@pytest.mark.slow
async def test_three_replicas_one_killed_mid_stream_every_reading_stored_once(
    settings: Settings,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    sessions = 6
    env = {"GATEWAY_SESSIONS": str(sessions), "REPLICA_TAKEOVER_S": "3"}
    for name in ("r1", "r2", "r3"):
        start_replica(settings, gateway_process, name, **env)
    await wait_until(
        lambda: balanced(database_url, settings.client_id, ["r1", "r1", "r2", "r2", "r3", "r3"]),
        what="two sessions each",
    )
    publishing = asyncio.create_task(stream(mosquitto.port, range(300), rate=3000))
    await wait_until(lambda: at_least(database_url, 8000), seconds=30, what="first readings")
    before = await stored(database_url)
    gateway_process[1].kill()  # SIGKILL: nothing committed, nothing acknowledged, locks dropped
    killed_at = time.monotonic()
    await wait_until(
        lambda: all_owned(database_url, settings.client_id, sessions),
        seconds=15,
        what="the killed replica's sessions taken over",
    )
    takeover_s = time.monotonic() - killed_at
    owners = await session_owners(database_url, settings.client_id)
    print(f"take-over after SIGKILL: {takeover_s:.2f} s (REPLICA_TAKEOVER_S=3); {owners}")
    assert set(owners.values()) == {"r1", "r3"}
    assert sorted(owners.values()).count("r1") == 3
    assert takeover_s < 3 + 3  # a look, and the connect
    await wait_until(lambda: at_least(database_url, before + 3000), what="the others carry on")
    sent = await publishing
    assert sent == 30_000
    await assert_stored_once(database_url, sent)


async def test_sigterm_hands_over_at_once_and_an_added_replica_takes_a_share(
    settings: Settings,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    # The look for free sessions is slow here (30 s): a hand-over that happens within seconds
    # is the stopping replica's doing (it commits, acknowledges, frees and notifies).
    sessions = 4
    env = {
        "GATEWAY_SESSIONS": str(sessions),
        "REPLICA_TAKEOVER_S": "30",
        "HEARTBEAT_INTERVAL_S": "0.5",
    }
    start_replica(settings, gateway_process, "r1", **env)
    leaving = start_replica(settings, gateway_process, "r2", **env)
    # Started together, the two may first split 4-0 and even out only at a look: allow two.
    await wait_until(
        lambda: balanced(database_url, settings.client_id, ["r1", "r1", "r2", "r2"]),
        seconds=70,
        what="two sessions each",
    )
    publishing = asyncio.create_task(stream(mosquitto.port, range(150), rate=2500))
    await wait_until(lambda: at_least(database_url, 3000), seconds=30, what="first readings")
    leaving.signal(signal.SIGTERM)
    returncode, output = await leaving.wait_exit(seconds=30)
    assert returncode == 0, output
    exited_at = time.monotonic()
    await wait_until(
        lambda: all_owned(database_url, settings.client_id, sessions),
        seconds=5,
        what="r2's sessions taken over at once",
    )
    handover_s = time.monotonic() - exited_at
    print(f"hand-over after SIGTERM: {handover_s:.2f} s after the process exited")
    assert set((await session_owners(database_url, settings.client_id)).values()) == {"r1"}
    beats = "SELECT client_id, sessions, stopped_at IS NOT NULL FROM gateway_heartbeat"
    expected = {
        (f"{settings.client_id}/r1", (0, 1, 2, 3), False),
        (f"{settings.client_id}/r2", (), True),
    }
    await wait_until(
        lambda: _beats(database_url, beats, expected), what="the heartbeats list the sessions"
    )
    start_replica(settings, gateway_process, "r3", **env)
    added_at = time.monotonic()
    await wait_until(
        lambda: _holds(database_url, settings.client_id, "r3", 2),
        seconds=70,  # a notification hands it over at once; a missed one, the next look
        what="the added replica's share",
    )
    print(f"added replica holds its share after {time.monotonic() - added_at:.2f} s")
    sent = await publishing
    assert sent == 15_000
    await assert_stored_once(database_url, sent)


async def _beats(database_url: str, sql: str, expected: set[tuple[object, ...]]) -> bool:
    rows = await query(database_url, sql)
    return {(name, tuple(sessions), stopped) for name, sessions, stopped in rows} == expected


async def _holds(database_url: str, client_id: str, name: str, sessions: int) -> bool:
    owners = await session_owners(database_url, client_id)
    return list(owners.values()).count(name) == sessions


def vehicle(minute: int, temp: float) -> bytes:
    at = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30 - minute)
    stamp = at.isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"soc": 50, "kwhDeliveredDc": 0.5, "batteryTemp": temp, "timestamp": stamp}
    ).encode()


async def leader(database_url: str, client_id: str) -> str | None:
    rows = await query(
        database_url,
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
        " AND l.classid::bigint = %s AND l.objid = 1000000",
        namespace(client_id) % 2**32,
    )
    return str(rows[0][0]) if rows else None


async def test_an_alert_is_raised_once_and_cleared_once_while_replicas_come_and_go(
    settings: Settings,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    env = {
        "GATEWAY_SESSIONS": "3",
        "REPLICA_TAKEOVER_S": "2",
        "ALERTS_ENABLED": "true",
        "ALERT_CHECK_INTERVAL_S": "1",
        "ALERT_GATHER_S": "0.05",
    }
    running = {
        name: start_replica(settings, gateway_process, name, **env) for name in ("r1", "r2", "r3")
    }
    await wait_until(lambda: all_owned(database_url, settings.client_id, 3), what="sessions")
    first = await leader(database_url, settings.client_id)
    assert first in {"r1", "r2", "r3"}
    events = (
        "SELECT e.state FROM alert_event e JOIN alert a USING (alert_id)"
        " WHERE a.device_name = 'EV-rep' AND a.rule = 'batteryOverTemp' ORDER BY e.event_id"
    )
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        for minute in range(3):  # hot readings, one to each session in turn
            await client.publish("fleet/vehicle/EV-rep", vehicle(minute, 60), qos=1)
        await wait_until(lambda: _events(database_url, events, ["raised"]), what="the alert raised")
        running[str(first)].kill()  # the leader dies: another leads within the take-over time
        killed_at = time.monotonic()
        await wait_until(
            lambda: _led_by_other(database_url, settings.client_id, str(first)),
            seconds=10,
            what="a new leader",
        )
        print(f"new leader after SIGKILL: {time.monotonic() - killed_at:.2f} s")
        running["r4"] = start_replica(settings, gateway_process, "r4", **env)
        for minute in range(3, 9):  # still hot while replicas join and reorganise
            await client.publish("fleet/vehicle/EV-rep", vehicle(minute, 61), qos=1)
            await asyncio.sleep(0.3)
        second = await leader(database_url, settings.client_id)
        running[str(second)].signal(signal.SIGTERM)  # the next leader stops cleanly
        for minute in range(9, 12):  # cool: cleared, once
            await client.publish("fleet/vehicle/EV-rep", vehicle(minute, 40), qos=1)
            await asyncio.sleep(0.3)
        await wait_until(
            lambda: _events(database_url, events, ["raised", "cleared"]),
            seconds=20,
            what="the alert cleared",
        )
        await asyncio.sleep(2.5)  # a full round on the leader, or two: nothing more
    assert [state for (state,) in await query(database_url, events)] == ["raised", "cleared"]
    assert await count(database_url, "SELECT count(*) FROM vehicle_reading") == 12


async def _events(database_url: str, sql: str, expected: list[str]) -> bool:
    return [state for (state,) in await query(database_url, sql)] == expected


async def _led_by_other(database_url: str, client_id: str, old: str) -> bool:
    now = await leader(database_url, client_id)
    return now is not None and now != old


async def test_session_logins_share_the_fleet_on_the_secure_broker_and_devices_cannot() -> None:
    """With GATEWAY_SESSIONS=2, broker_sync init makes fleetgate-gateway-0 and -1 (role
    gateway, one secret); the sessions' shared subscription reads the fleet. A device that
    joins a group of the client id's name (the broker lets it subscribe, and drops what it may
    not read) takes none of the gateway's share: the group's name comes from the secret."""
    logins = [
        *session_usernames("x", "fleetgate-gateway", "gateway", ["2"]),
        device_username("meter", "A"),
    ]
    assert logins[:2] == ["fleetgate-gateway-0", "fleetgate-gateway-1"]
    server = await asyncio.to_thread(Mosquitto, secure=True)
    try:
        roles = {name: "gateway" for name in logins[:2]}
        write_files(
            SyncSettings("", server.password_file, server.acl_file, server.pid_file, 30),
            [Login(n, hash_secret("s"), roles.get(n, "device")) for n in logins],  # type: ignore[arg-type]
        )
        reload_broker(server.pid_file)
        await asyncio.sleep(0.5)
        [share] = session_subscriptions("fleetgate-gateway", 2, "s")
        guessed = "$share/fleetgate-gateway/fleet/#"
        received: dict[str, list[str]] = {name: [] for name in logins}
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for name in logins:
                client = aiomqtt.Client("127.0.0.1", server.port, username=name, password="s")
                clients[name] = await stack.enter_async_context(client)
                await clients[name].subscribe(share if name in roles else guessed, qos=1)
            for minute in range(10):
                await clients[logins[2]].publish("fleet/meter/A", reading(0, minute), qos=1)

            async def gather(name: str) -> None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.5):
                        async for message in clients[name].messages:
                            received[name].append(message.topic.value)

            await asyncio.gather(*(gather(name) for name in logins))
    finally:
        await asyncio.to_thread(server.close)
    print({name: len(topics) for name, topics in received.items()})
    assert len(received[logins[0]]) + len(received[logins[1]]) == 10
    assert received[logins[0]]
    assert received[logins[1]]
    assert received[logins[2]] == []  # a device reads nothing, shared or not


def test_the_share_and_who_hands_over_balance_any_start_within_one() -> None:
    """Pure logic: a replica takes free sessions up to ceil(K/N) while it holds no more than
    any other, and the fullest hands one over while it holds two more than the emptiest; from
    any start they end within one of each other, every session owned."""
    for sessions, holdings in [(4, [4, 0]), (6, [6, 0, 0]), (6, [2, 2, 2, 0]), (5, [0, 0, 0])]:
        census = {f"r{n}": list(range(held)) for n, held in enumerate(holdings)}
        for _ in range(20):
            owned = sum(len(held) for held in census.values())
            target = share(sessions, len(census))
            for name, held in census.items():
                others = [len(h) for other, h in census.items() if other != name]
                while may_take(len(held), target, others) and owned < sessions:
                    held.append(owned)
                    owned += 1
            givers = [name for name in census if to_release(Census(census, None), name)]
            assert len(givers) <= 1
            for name in givers:
                census[name].pop()
        sizes = sorted(len(held) for held in census.values())
        assert sum(sizes) == sessions
        assert sizes[-1] - sizes[0] <= 1, (sessions, holdings, sizes)


async def test_two_replicas_and_the_broker_restarted_mid_stream_store_every_reading_once(
    settings: Settings, database_url: str, gateway_process: list[GatewayProcess]
) -> None:
    broker = await asyncio.to_thread(Mosquitto)
    try:
        settings = settings.replace(mqtt=MqttAddress.parse(broker.url))
        env = {"GATEWAY_SESSIONS": "4", "REPLICA_TAKEOVER_S": "3"}
        for name in ("r1", "r2"):
            start_replica(settings, gateway_process, name, **env)
        await wait_until(
            lambda: balanced(database_url, settings.client_id, ["r1", "r1", "r2", "r2"]),
            what="two sessions each",
        )
        first = await stream(broker.port, range(40), rate=4000)
        await asyncio.to_thread(broker.stop)  # with readings queued and in flight, likely
        await asyncio.to_thread(broker.start)
        second = await stream(broker.port, range(40, 80), rate=4000)
        await assert_stored_once(database_url, first + second)
        assert first + second == 8000
        owners = await session_owners(database_url, settings.client_id)
        assert sorted(owners.values()) == ["r1", "r1", "r2", "r2"]  # nobody let go
    finally:
        await asyncio.to_thread(broker.close)


async def test_with_one_session_a_second_replica_is_a_standby_that_takes_over(
    settings: Settings,
    mosquitto: Mosquitto,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    env = {"REPLICA_TAKEOVER_S": "2"}  # GATEWAY_SESSIONS=1, the default
    active = start_replica(settings, gateway_process, "r1", **env)
    await wait_until(lambda: balanced(database_url, settings.client_id, ["r1"]), what="r1 owns")
    start_replica(settings, gateway_process, "r2", **env)
    await asyncio.sleep(1.0)
    assert await session_owners(database_url, settings.client_id) == {0: "r1"}
    publishing = asyncio.create_task(stream(mosquitto.port, range(30), rate=2000))
    await wait_until(lambda: at_least(database_url, 500), what="first readings")
    active.kill()
    await wait_until(
        lambda: balanced(database_url, settings.client_id, ["r2"]), seconds=10, what="r2 owns"
    )
    await assert_stored_once(database_url, await publishing)


# /health's timing here: gateways beat every 0.3 s, silent for 3 s is stale.
HEALTH_ENV = {"HEARTBEAT_INTERVAL_S": "0.3"}
MAX_AGE_S = 3.0


def unnamed(replica: GatewayProcess) -> str:
    """An unnamed replica's name (its lock connection's application_name): host-pid."""
    assert replica.process is not None
    return f"{socket.gethostname()}-{replica.process.pid}"


async def health(api: Api) -> dict[str, Any]:
    response = await api.client.get("/health")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


def states(body: dict[str, Any]) -> dict[str, str]:
    return {gateway["clientId"]: gateway["state"] for gateway in body["gateways"]}


async def health_is(api: Api, status: str, expected: dict[str, str]) -> bool:
    body = await health(api)
    return body["status"] == status and states(body) == expected


async def poke(database_url: str) -> None:
    """What a replica that joins, hands a session over or leaves sends: each replica looks."""
    await query(database_url, "SELECT pg_notify(%s, 'test')", CHANNEL)


@pytest.fixture
async def api_as_its_role(
    api_settings: ApiSettings, database_url: str, login_as: LoginAs
) -> AsyncIterator[Api]:
    """The API as its own database role (it must see the replicas' locks as such) with a short
    HEARTBEAT_MAX_AGE_S."""
    await apply_schema(database_url)
    as_api = api_settings.replace(
        database_url=login_as(database_url, "fleetgate_api"), heartbeat_max_age_s=MAX_AGE_S
    )
    async with serving(as_api) as api:
        yield api


async def test_health_forgets_a_killed_unnamed_replica_once_its_sessions_are_taken_over(
    settings: Settings,
    database_url: str,
    gateway_process: list[GatewayProcess],
    api_as_its_role: Api,
) -> None:
    """An unnamed replica is named after its process, so none will beat as it again: killed,
    once the others hold its sessions, /health lists it as gone and is ok again. A named one
    killed is expected back: stale, and /health degraded, though its sessions are taken."""
    api, takeover_s = api_as_its_role, 1.0
    env = {"GATEWAY_SESSIONS": "6", "REPLICA_TAKEOVER_S": str(takeover_s), **HEALTH_ENV}
    named = start_replica(settings, gateway_process, "r1", **env)
    first, second = (start_replica(settings, gateway_process, "", **env) for _ in range(2))
    names = ["r1", unnamed(first), unnamed(second)]
    await wait_until(
        lambda: balanced(database_url, settings.client_id, sorted(names * 2)),
        seconds=30,
        what="two sessions each",
    )
    rows = {f"{settings.client_id}/{name}": "running" for name in names}
    await wait_until(lambda: health_is(api, "ok", rows), what="/health ok, three running")

    first.kill()
    killed_at = time.monotonic()
    await wait_until(
        lambda: balanced(database_url, settings.client_id, sorted(names[::2] * 3)),
        seconds=10,
        what="its sessions taken over",
    )
    rows[f"{settings.client_id}/{names[1]}"] = "gone"
    await wait_until(lambda: health_is(api, "ok", rows), what="the killed replica gone")
    gone_s = time.monotonic() - killed_at
    print(f"/health ok, the killed unnamed replica gone, {gone_s:.2f} s after the kill")
    assert gone_s < MAX_AGE_S + takeover_s + 2.0  # the age, a look and its connect, a beat
    body = await health(api)
    assert body["reasons"] == []
    await asyncio.sleep(1.0)
    assert await health_is(api, "ok", rows)  # and it stays so

    named.kill()
    await wait_until(
        lambda: balanced(database_url, settings.client_id, [names[2]] * 6),
        seconds=10,
        what="r1's sessions taken over",
    )
    rows[f"{settings.client_id}/r1"] = "stale"
    await wait_until(lambda: health_is(api, "degraded", rows), what="the named replica stale")
    [reason] = (await health(api))["reasons"]
    assert reason.startswith(f"gateway '{settings.client_id}/r1': no heartbeat for ")
    assert reason.endswith("; running replicas took its sessions over")


async def test_health_stays_degraded_while_nobody_owns_a_killed_replicas_sessions(
    settings: Settings,
    database_url: str,
    gateway_process: list[GatewayProcess],
    api_as_its_role: Api,
) -> None:
    """The survivor looks for free sessions only every 600 s here (a kill notifies nobody):
    the killed unnamed replica's sessions stay unowned, and /health degraded, naming them,
    until a notification makes the survivor look and take them."""
    api = api_as_its_role
    env = {"GATEWAY_SESSIONS": "4", "REPLICA_TAKEOVER_S": "600", **HEALTH_ENV}
    first, second = (start_replica(settings, gateway_process, "", **env) for _ in range(2))
    expected = sorted([unnamed(first)] * 2 + [unnamed(second)] * 2)

    async def poked_and_balanced() -> bool:
        await poke(database_url)  # takes notify nobody: a session freed meanwhile waits a look
        return await balanced(database_url, settings.client_id, expected)

    await wait_until(poked_and_balanced, seconds=30, what="two sessions each")
    killed = f"{settings.client_id}/{unnamed(second)}"
    rows = {f"{settings.client_id}/{unnamed(first)}": "running", killed: "running"}
    await wait_until(lambda: health_is(api, "ok", rows), what="/health ok, two running")
    lost = sorted(
        session
        for session, name in (await session_owners(database_url, settings.client_id)).items()
        if name == unnamed(second)
    )
    await asyncio.sleep(0.5)  # the last poke looked at by now
    second.kill()
    rows[killed] = "stale"
    await wait_until(lambda: health_is(api, "degraded", rows), what="the killed replica stale")
    await asyncio.sleep(1.0)
    assert len(await session_owners(database_url, settings.client_id)) == 2  # still unowned
    body = await health(api)
    assert states(body) == rows
    [reason] = body["reasons"]
    assert reason.startswith(f"gateway {killed!r}: no heartbeat for ")
    assert reason.endswith(f"; no running gateway owns its sessions {lost[0]}, {lost[1]}")

    await poke(database_url)  # the survivor looks, and takes them
    await wait_until(lambda: all_owned(database_url, settings.client_id, 4), what="owned again")
    rows[killed] = "gone"
    await wait_until(lambda: health_is(api, "ok", rows), what="/health ok again")
