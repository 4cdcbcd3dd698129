"""The ingestion contract on RabbitMQ's MQTT plugin (docs/rabbitmq.md), with the gateway as it is,
configured only by MQTT_URL: QoS 1 readings survive a SIGKILL of the gateway mid-stream and are
stored exactly once; a reading posted to the API raises an alert, retained for a subscriber to
its exact topic; a device login writes its own topic only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest
import yaml

from fleetgate_tools.private_services import PrivateRabbitMQ
from gateway.settings import MqttAddress, Settings
from http_api.settings import Settings as ApiSettings
from tests.http_helpers import serving, vehicle_reading
from tests.services import PROJECT
from tests.support import GatewayProcess, count, wait_until

pytestmark = pytest.mark.slow

START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)
PROBE = "M-probe"
DEVICE_SECRET = "device-secret"
# docs/rabbitmq.md: a device login may write its own topic only ({username} is expanded; topic
# permissions see the AMQP routing key, with dots for slashes) and read nothing.
DEVICE_TOPICS = {
    "user": "M-own",
    "vhost": "/",
    "exchange": "amq.topic",
    "write": "^fleet\\.meter\\.{username}$",
    "read": "^$",
}


@pytest.fixture(scope="module", params=["classic", "quorum"])
def rabbitmq(request: pytest.FixtureRequest) -> Iterator[PrivateRabbitMQ]:
    """A node whose persistent sessions are classic queues (the default), or quorum queues
    (``mqtt.durable_queue_type``, replicated in a cluster; here a single node)."""
    with PrivateRabbitMQ(
        durable_queue_type=request.param,
        logins={"M-own": DEVICE_SECRET},
        topic_permissions=[DEVICE_TOPICS],
    ) as node:
        yield node


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def meter_reading(device: str, minute: int) -> bytes:
    at = START + timedelta(minutes=minute)
    return json.dumps({"kwhConsumedAc": 0.25, "voltage": 230, "timestamp": iso(at)}).encode()


@contextlib.asynccontextmanager
async def connected(node: PrivateRabbitMQ, name: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1", node.port, identifier=f"{name}-{uuid.uuid4().hex[:8]}"
    ) as client:
        yield client


async def publish_readings(node: PrivateRabbitMQ, devices: int, minutes: range) -> int:
    sent = 0
    async with connected(node, "pub") as client:
        for minute in minutes:
            for device in range(devices):
                await client.publish(
                    f"fleet/meter/M-{device}", meter_reading(f"M-{device}", minute), qos=1
                )
                sent += 1
            await asyncio.sleep(0.02)
    return sent


async def stored(database_url: str, sql: str, expected: int) -> bool:
    return await count(database_url, sql) >= expected


async def wait_for_session(node: PrivateRabbitMQ, database_url: str) -> None:
    """Until the gateway's session queue is bound: before that RabbitMQ drops what is published
    (no queue, no subscriber). A probe reading, sent again until stored (a duplicate of it is
    the same row)."""
    await wait_until(lambda: _schema_applied(database_url), what="schema applied")
    async with connected(node, "probe") as client:

        async def probe_stored() -> bool:
            await client.publish(f"fleet/meter/{PROBE}", meter_reading(PROBE, 0), qos=1)
            await asyncio.sleep(0.2)
            return await count(database_url, "SELECT count(*) FROM meter_reading") >= 1

        await wait_until(probe_stored, seconds=30, what="the gateway's session on RabbitMQ")


async def _schema_applied(database_url: str) -> bool:
    relation = "SELECT count(*) FROM pg_class WHERE relname = 'meter_reading'"
    return await count(database_url, relation) == 1


async def test_gateway_killed_mid_stream_on_rabbitmq_stores_every_reading_once(
    rabbitmq: PrivateRabbitMQ,
    settings: Settings,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    env = {"MQTT_URL": rabbitmq.url, "BATCH_SIZE": "100"}
    first = GatewayProcess(settings, **env)
    gateway_process.append(first)
    first.start()
    await wait_for_session(rabbitmq, database_url)
    # The session queue is durable and expires as mqtt.subscription_ttl says (not after 24 h).
    queues = await asyncio.to_thread(
        rabbitmq.ctl, "list_queues", "name", "durable", "type", "arguments"
    )
    [session] = [line for line in queues.splitlines() if settings.client_id in line]
    assert "true" in session
    assert rabbitmq.durable_queue_type in session
    assert f"{{x-expires,{rabbitmq.subscription_ttl_ms}}}" in session.replace('"', "")

    publishing = asyncio.create_task(publish_readings(rabbitmq, devices=40, minutes=range(1, 51)))
    history = "SELECT count(*) FROM meter_reading"
    await wait_until(lambda: stored(database_url, history, 400), seconds=30, what="400 stored")
    assert not publishing.done()
    first.kill()  # SIGKILL: whatever it held unacknowledged, the broker redelivers
    await asyncio.sleep(0.5)
    second = GatewayProcess(settings, **env)
    gateway_process.append(second)
    second.start()
    sent = await publishing
    rollup = "SELECT coalesce(sum(readings), 0) FROM meter_hourly"
    await wait_until(
        lambda: stored(database_url, rollup, sent + 1), seconds=60, what="every reading"
    )
    await asyncio.sleep(0.5)  # anything doubled would show now
    assert await count(database_url, history) == sent + 1 == 2001
    assert await count(database_url, rollup) == sent + 1


async def test_an_alert_raised_by_an_api_reading_is_retained_for_its_exact_topic_only(
    rabbitmq: PrivateRabbitMQ,
    settings: Settings,
    database_url: str,
    gateway_process: list[GatewayProcess],
) -> None:
    gateway = GatewayProcess(settings, MQTT_URL=rabbitmq.url)
    gateway_process.append(gateway)
    gateway.start()
    await wait_for_session(rabbitmq, database_url)
    device = f"EV-rmq-{uuid.uuid4().hex[:6]}"
    # Through the HTTP API, its MQTT_URL at the node too: HTTP ingestion publishes there.
    api_settings = ApiSettings.from_env({}).replace(
        database_url=database_url, mqtt=MqttAddress.parse(rabbitmq.url), enrolment="open"
    )
    async with serving(api_settings) as api:
        hot = vehicle_reading(device, START, 0.5, temp=70)
        status, body = await api.send("POST", "/v1/telemetry", hot)
    assert (status, body["topic"]) == (202, f"fleet/vehicle/{device}")
    published = "SELECT count(*) FROM alert_event WHERE published_at IS NOT NULL"
    await wait_until(lambda: stored(database_url, published, 1), what="the raise published")

    topic = f"fleet/alerts/vehicle/{device}/batteryOverTemp"
    async with connected(rabbitmq, "engineer") as exact:  # subscribes after the raise
        await exact.subscribe(topic, qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(exact.messages))
    assert message.retain
    assert isinstance(message.payload, bytes)
    raised = json.loads(message.payload)
    assert (raised["deviceId"], raised["rule"], raised["state"]) == (
        device,
        "batteryOverTemp",
        "raised",
    )

    # RabbitMQ before 3.13 does not deliver retained messages to wildcard subscriptions: if
    # this starts failing, docs/rabbitmq.md's limit has gone with a newer broker.
    barrier = f"fleet/alerts/test-barrier/{uuid.uuid4().hex}"
    seen: list[tuple[str, bool]] = []
    async with connected(rabbitmq, "dashboard") as wildcard:
        await wildcard.subscribe("fleet/alerts/#", qos=1)
        await wildcard.publish(barrier, b"barrier", qos=1)
        async with asyncio.timeout(10):
            async for arrived in wildcard.messages:
                seen.append((arrived.topic.value, arrived.retain))
                if arrived.topic.value == barrier:
                    break
    assert seen == [(barrier, False)]


async def test_a_device_login_publishes_to_its_own_topic_only(rabbitmq: PrivateRabbitMQ) -> None:
    topics: list[str] = []
    async with connected(rabbitmq, "watch") as watch:
        await watch.subscribe("fleet/meter/#", qos=1)

        async def device(topic: str) -> None:
            async with aiomqtt.Client(
                "127.0.0.1", rabbitmq.port, username="M-own", password=DEVICE_SECRET
            ) as client:
                await client.publish(topic, meter_reading("M-own", 0), qos=1, timeout=2)

        await device("fleet/meter/M-own")
        # Refused: RabbitMQ closes the connection; a v3.1.1 publisher sees no PUBACK.
        with pytest.raises(aiomqtt.MqttError):
            await device("fleet/meter/M-other")
        await watch.publish("fleet/meter/M-barrier", b"barrier", qos=1)
        async with asyncio.timeout(10):
            async for message in watch.messages:
                topics.append(message.topic.value)
                if message.topic.value == "fleet/meter/M-barrier":
                    break
    assert topics == ["fleet/meter/M-own", "fleet/meter/M-barrier"]


async def test_a_gateway_with_several_sessions_refuses_to_start_on_rabbitmq(
    rabbitmq: PrivateRabbitMQ, settings: Settings
) -> None:
    """RabbitMQ 3.10 has no shared subscriptions: with GATEWAY_SESSIONS=2 every reading would
    be dropped, so the gateway says why and exits before it subscribes anything."""
    gateway = GatewayProcess(settings, MQTT_URL=rabbitmq.url, GATEWAY_SESSIONS="2")
    gateway.start()
    try:
        returncode, output = await gateway.wait_exit(30)
    finally:
        gateway.kill()
    assert returncode == 2, output
    [refusal] = [line for line in output.splitlines() if "Refusing to start" in line]
    assert "ERROR" in refusal
    assert "GATEWAY_SESSIONS=2" in refusal
    assert f"the broker at mqtt://127.0.0.1:{rabbitmq.port} does not" in refusal
    # Nothing was subscribed: no session queue was made for the gateway's client id.
    queues = await asyncio.to_thread(rabbitmq.ctl, "list_queues", "name")
    assert settings.client_id not in queues


def run_compose_rabbitmq_init(node: PrivateRabbitMQ, secrets: dict[str, str]) -> None:
    """docker-compose.yml's rabbitmq-init script, as compose would run it (``$$`` is ``$``),
    against this node instead of rabbit@rabbitmq-1, with its Erlang cookie."""
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    *shell, script = compose["services"]["rabbitmq-init"]["command"]
    assert shell == ["bash", "-c"]
    script = script.replace("$$", "$").replace("rabbit@rabbitmq-1", node.node)
    ctl = node.script.with_name("rabbitmqctl")
    env = {
        "PATH": f"{ctl.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        **node.environment(),
        "RABBITMQ_ERLANG_COOKIE": (node.root / ".erlang.cookie").read_text().strip(),
        **secrets,
    }
    user = "rabbitmq" if os.geteuid() == 0 else None
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, user=user, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_compose_profiles_logins_let_each_service_do_its_job_and_no_more(
    rabbitmq: PrivateRabbitMQ, settings: Settings, database_url: str
) -> None:
    """The logins and permissions docker-compose.yml's rabbitmq profile makes: the gateway
    (client id fleetgate-gateway, as compose runs it) stores what the API publishes and
    raises an alert that its publisher's login publishes, retained; the API's login may not
    publish an alert."""
    secrets = {
        "GATEWAY_MQTT_SECRET": "gateway-secret",
        "ALERTS_MQTT_SECRET": "alerts-secret",
        "API_MQTT_SECRET": "api-secret",
    }
    await asyncio.to_thread(run_compose_rabbitmq_init, rabbitmq, secrets)
    users = await asyncio.to_thread(rabbitmq.ctl, "list_users")
    assert "guest" not in users
    address = f"127.0.0.1:{rabbitmq.port}"
    gateway = GatewayProcess(
        settings,
        MQTT_URL=f"mqtt://fleetgate-gateway:gateway-secret@{address}",
        MQTT_ALERTS_URL=f"mqtt://fleetgate-alerts:alerts-secret@{address}",
        MQTT_CLIENT_ID="fleetgate-gateway",
    )
    try:
        gateway.start()
        await wait_until(lambda: _schema_applied(database_url), what="schema applied")
        api_settings = ApiSettings.from_env({}).replace(
            database_url=database_url,
            mqtt=MqttAddress.parse(f"mqtt://fleetgate-api:api-secret@{address}"),
            enrolment="open",
        )
        device = f"EV-login-{uuid.uuid4().hex[:6]}"
        hot = vehicle_reading(device, START, 0.5, temp=70)
        async with serving(api_settings) as api:

            async def stored_once_subscribed() -> bool:  # nothing is queued before that
                status, _ = await api.send("POST", "/v1/telemetry", hot)
                assert status == 202
                return await count(database_url, "SELECT count(*) FROM vehicle_reading") >= 1

            await wait_until(stored_once_subscribed, seconds=30, what="the API's reading stored")
        published = "SELECT count(*) FROM alert_event WHERE published_at IS NOT NULL"
        await wait_until(lambda: stored(database_url, published, 1), what="the raise published")
        topic = f"fleet/alerts/vehicle/{device}/batteryOverTemp"
        async with connected(rabbitmq, "engineer") as engineer:
            await engineer.subscribe(topic, qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(engineer.messages))
        assert message.retain
        with pytest.raises(aiomqtt.MqttError):  # refused: the connection is closed
            async with aiomqtt.Client(
                "127.0.0.1", rabbitmq.port, username="fleetgate-api", password="api-secret"
            ) as impostor:
                await impostor.publish(topic, b"{}", qos=1, retain=True, timeout=2)
    finally:
        gateway.kill()
        print(gateway.output())
