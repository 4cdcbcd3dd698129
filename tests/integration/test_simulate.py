"""The simulator: its readings are what the gateway accepts and behave like a fleet; its CLI
publishes them to a real broker, over one connection or each device logged in as itself."""

from __future__ import annotations

import asyncio
import itertools
import random
import stat
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiomqtt
import msgspec
import psycopg
import pytest

from fleetgate_tools.simulate import build_parser, default_start
from fleetgate_tools.simulated_fleet import Fleet, FleetProfile, Message, rfc3339
from fleetgate_tools.simulated_logins import read_device_logins
from gateway.broker_sync import add_login
from gateway.readings import Limits, MeterReading, VehicleReading, decode_message
from gateway.registry import DeviceRecord, register
from tests.integration.test_broker_sync import execute, syncing
from tests.services import PROJECT, Mosquitto
from tests.support import StartGateway, count, query, wait_until

NOW = datetime.now(UTC).replace(microsecond=0)
LIMITS = Limits(
    max_payload_bytes=262_144, max_future_skew=timedelta(minutes=5), max_age=timedelta(days=31)
)
QUIET = {"duplicate_share": 0.0, "late_share": 0.0, "malformed_share": 0.0, "silent_share": 0.0}


def take(fleet: Fleet, count: int) -> list[Message]:
    return list(itertools.islice(fleet.stream(), count))


def decode(message: Message) -> list[MeterReading | VehicleReading]:
    decoded = decode_message(message.topic, message.payload, NOW, LIMITS)
    assert not decoded.rejects, (message, decoded.rejects)
    return decoded.readings


def sessions(profile: FleetProfile, intervals: int) -> dict[int, list[tuple[float, float, float]]]:
    """Per charger: (AC kWh, DC kWh, SoC) of each interval, decoded from the payloads."""
    fleet = Fleet(profile, NOW - timedelta(days=2))
    seen: dict[int, list[tuple[float, float, float]]] = {}
    for step in range(intervals):
        for index, charger in enumerate(fleet.chargers):
            at = fleet.start + timedelta(minutes=step, seconds=index)
            meter_message, vehicle_message = fleet.report(index, at)
            (meter,) = decode(meter_message)
            (vehicle,) = decode(vehicle_message)
            assert isinstance(meter, MeterReading)
            assert isinstance(vehicle, VehicleReading)
            assert meter.timestamp == vehicle.timestamp == at
            seen.setdefault(charger.number, []).append(
                (meter.kwh_consumed_ac, vehicle.kwh_delivered_dc, vehicle.soc)
            )
    return seen


def test_readings_decode_except_the_malformed_share() -> None:
    fleet = Fleet(FleetProfile(devices=50, malformed_share=0.02, seed=1), NOW - timedelta(days=1))
    messages = take(fleet, 5000)
    malformed = [m for m in messages if m.malformed]
    assert 40 <= len(malformed) <= 160
    for message in messages:
        if not message.malformed:
            assert len(decode(message)) == 1
    for message in malformed:
        assert decode_message(message.topic, message.payload, NOW, LIMITS).rejects


def test_arrays_hold_consecutive_readings_of_one_device() -> None:
    fleet = Fleet(FleetProfile(devices=5, array=100, seed=2, **QUIET), NOW - timedelta(days=1))
    messages = take(fleet, 20)
    assert {m.readings for m in messages} == {100}
    for message in messages:
        readings = decode(message)
        assert len(readings) == 100
        stamps = [r.timestamp for r in readings]
        assert stamps == sorted(stamps)
        assert stamps[1] - stamps[0] == timedelta(minutes=1)


def test_soc_rises_while_charging_and_healthy_chargers_are_88_to_94_percent_efficient() -> None:
    seen = sessions(FleetProfile(devices=20, faulty_share=0.0, seed=3, **QUIET), 240)
    charged = 0
    for intervals in seen.values():
        for (_, _, soc_before), (ac, dc, soc) in itertools.pairwise(intervals):
            if dc > 0:
                charged += 1
                assert soc > soc_before
            if dc >= 0.05:  # below this, rounding to whole mWh blurs the ratio
                assert 0.875 <= dc / ac <= 0.945
    assert charged > 500


def test_faulty_chargers_stay_below_85_percent() -> None:
    seen = sessions(FleetProfile(devices=20, faulty_share=1.0, seed=4, **QUIET), 120)
    ratios = [dc / ac for intervals in seen.values() for ac, dc, _ in intervals if dc >= 0.05]
    assert len(ratios) > 200
    assert max(ratios) < 0.85


def test_some_batteries_overheat_and_some_meters_fall_silent() -> None:
    profile = FleetProfile(devices=10, overheat_share=1.0, silent_share=1.0, seed=5)
    fleet = Fleet(profile, NOW - timedelta(days=1))
    messages = [m for m in take(fleet, 1500) if not m.malformed]
    temps = [
        reading.battery_temp
        for message in messages
        for reading in decode_message(message.topic, message.payload, NOW, LIMITS).readings
        if isinstance(reading, VehicleReading)
    ]
    assert max(temps) > 55
    meters = [m for m in messages if m.topic.startswith("fleet/meter/")]
    vehicles = [m for m in messages if m.topic.startswith("fleet/vehicle/")]
    assert len(meters) <= 10 * 32 < len(vehicles)


def test_duplicates_and_late_messages_occur() -> None:
    profile = FleetProfile(devices=20, duplicate_share=0.01, late_share=0.01, seed=6)
    messages = take(Fleet(profile, NOW - timedelta(days=1)), 5000)
    assert len({m.payload for m in messages}) < len(messages)  # duplicates
    stamps = [m.at for m in messages]
    assert any(later < earlier for earlier, later in itertools.pairwise(stamps))  # late


def test_accelerated_runs_end_about_now() -> None:
    args = build_parser().parse_args(["--rate", "1000", "--count", "120000", "--devices", "100"])
    start = default_start(args, NOW)
    assert start == NOW - timedelta(seconds=120_000 * 60 / 200)
    assert default_start(build_parser().parse_args([]), NOW) == NOW


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--mqtt-url", "--devices", "--speed", "--rate", "--duration", "--count"):
        assert option in text
    assert "--array" in text


async def test_simulator_publishes_to_a_real_broker(mosquitto: Mosquitto) -> None:
    first = random.randint(100_000, 900_000)  # device numbers of this test alone
    count = 400
    received: set[bytes] = set()
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=f"sim-sub-{uuid.uuid4().hex[:8]}"
    ) as subscriber:
        # Device topics only: other tests leave retained alerts under fleet/alerts/.
        await subscriber.subscribe("fleet/meter/+", qos=1)
        await subscriber.subscribe("fleet/vehicle/+", qos=1)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fleetgate_tools.simulate",
            "--mqtt-url",
            mosquitto.url,
            "--flood",
            "--count",
            str(count),
            "--devices",
            "50",
            "--first-device",
            str(first),
            "--malformed-share",
            "0",
            "--quiet",
            cwd=PROJECT,
            stderr=asyncio.subprocess.PIPE,
        )

        async def receive() -> None:
            async for message in subscriber.messages:
                number = int(str(message.topic).rsplit("-", 1)[1])
                if first <= number < first + 50:
                    assert isinstance(message.payload, bytes)
                    received.add(message.payload)
                    if len(received) >= count - 10:  # a few duplicates are part of the fleet
                        return

        await asyncio.wait_for(receive(), 30)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    assert b"sent 400" in stderr
    assert b"acked 400" in stderr
    for payload in received:
        assert msgspec.json.decode(payload)["timestamp"].endswith("Z")


def test_meters_are_230_v_single_phase_or_400_v_three_phase_and_read_around_it() -> None:
    fleet = Fleet(FleetProfile(devices=40, seed=8, **QUIET), NOW - timedelta(days=1))
    meters = {d.device_id: d for d in fleet.devices() if d.kind == "meter"}
    assert {(d.nominal_voltage_v, d.phases) for d in meters.values()} == {(230.0, 1), (400.0, 3)}
    vehicles = [d for d in fleet.devices() if d.kind == "vehicle"]
    assert len(vehicles) == 40
    assert all(d.battery_capacity_kwh for d in vehicles)
    for message in take(fleet, 2000):
        for reading in decode(message):
            if isinstance(reading, MeterReading):
                assert reading.meter_id is not None
                nominal = meters[reading.meter_id].nominal_voltage_v
                assert nominal is not None
                assert abs(reading.voltage - nominal) < 0.05 * nominal  # well inside the band


async def test_a_registered_fleet_raises_no_false_voltage_alerts(
    mosquitto: Mosquitto, database_url: str, start_gateway: StartGateway
) -> None:
    """--register: every simulated device registered with its true nominal voltage before
    publishing; a gateway in closed enrolment takes their readings and judges each meter
    against its own nominal voltage."""
    await start_gateway(enrolment="closed", voltage_min_duration_s=0)
    run = [
        sys.executable, "-m", "fleetgate_tools.simulate", "--mqtt-url", mosquitto.url,
        "--register", database_url, "--flood", "--count", "200", "--devices", "10",
        "--first-device", "7000", "--seed", "9", "--malformed-share", "0", "--quiet",
    ]  # fmt: skip
    # Each run its own ten simulated minutes (two runs within one second would otherwise send
    # the same readings, stored once).
    now = datetime.now(UTC).replace(microsecond=0)
    for expected, minutes_ago in (
        (b"20 created, 0 updated, 0 unchanged", 25),
        (b"0 created, 0 updated, 20 unchanged", 12),
    ):
        start = rfc3339(now - timedelta(minutes=minutes_ago))
        process = await asyncio.create_subprocess_exec(
            *run, "--start", start, cwd=PROJECT, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr
        assert b"registered 20 devices: " + expected in stderr
    rows = await query(
        database_url,
        "SELECT nominal_voltage_v, count(*) FROM meter GROUP BY 1 ORDER BY 1",
    )
    assert [voltage for voltage, _ in rows] == [230.0, 400.0]
    # A control meter judged against VOLTAGE_NOMINAL_V (230 V) at 400 V: once its alert is up,
    # every simulated meter (whose readings came first) has been judged.
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await register(conn, [DeviceRecord("meter", "M-control")])

    async def all_stored() -> bool:
        return await count(database_url, "SELECT count(*) FROM meter_reading") >= 200

    await wait_until(all_stored, what="the simulated meters' readings")
    reading = {"kwhConsumedAc": 0.1, "voltage": 400, "timestamp": rfc3339(datetime.now(UTC))}
    async with aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier=f"control-{uuid.uuid4().hex[:6]}"
    ) as client:
        await client.publish("fleet/meter/M-control", msgspec.json.encode(reading), qos=1)

    async def control_raised() -> bool:
        alerts = "SELECT count(*) FROM alert WHERE device_name = 'M-control'"
        return await count(database_url, alerts) == 1

    await wait_until(control_raised, what="the control meter's alert")
    assert await query(
        database_url, "SELECT device_name FROM alert WHERE rule = 'voltageOutOfRange'"
    ) == [("M-control",)]


@pytest.fixture
def secure_broker() -> Iterator[Mosquitto]:
    server = Mosquitto(secure=True)
    try:
        yield server
    finally:
        server.close()


async def simulate(*options: str) -> tuple[int, str]:
    """Run the simulator's CLI to its end: its exit status and what it said on stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetgate_tools.simulate", *options,
        cwd=PROJECT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    said = stderr.decode()
    assert process.returncode is not None
    assert "Traceback" not in said, said
    return process.returncode, said


async def topics(reader: aiomqtt.Client, count: int, until: bytes | None = None) -> Counter[str]:
    """Messages per topic: the next ``count``, or (``until``) up to one with that payload."""
    seen: Counter[str] = Counter()
    async with asyncio.timeout(30):
        async for message in reader.messages:
            seen[str(message.topic)] += 1
            if seen.total() == count or message.payload == until:
                return seen
    raise AssertionError("the reader was disconnected")


async def test_each_device_logs_in_as_itself_over_tls_with_the_secrets_register_kept(
    database_url: str, secure_broker: Mosquitto, tmp_path: Path
) -> None:
    """--register with --device-logins keeps the secrets in a file only its owner reads; each
    device then connects with its own login over TLS, in that run and in later ones; one
    device's login reaches only its own topic; a device disabled meanwhile is dropped while
    the others go on."""
    logins_file = tmp_path / "sim" / "logins.csv"
    fleet = ["--devices", "3", "--first-device", "8100", "--seed", "3", "--quiet",
             "--silent-share", "0", "--malformed-share", "0", "--duplicate-share", "0",
             "--late-share", "0"]  # fmt: skip
    broker = f"127.0.0.1:{secure_broker.tls_port}"
    tls = ["--mqtt-url", f"mqtts://{broker}", "--ca-file", str(secure_broker.ca_file)]
    usernames = {f"{kind}/{prefix}-{n}" for n in (8100, 8101, 8102)
                 for kind, prefix in (("meter", "MTR"), ("vehicle", "EV"))}  # fmt: skip
    each = {f"fleet/{username}": 1 for username in usernames}
    now = datetime.now(UTC).replace(microsecond=0)

    def since(minutes: int) -> list[str]:  # each run its own readings
        return ["--start", rfc3339(now - timedelta(minutes=minutes))]

    reader_secret = await add_login(database_url, "reader", "gateway")
    async with syncing(database_url, secure_broker):
        await asyncio.sleep(1.0)  # the first sync and the broker's reload
        async with aiomqtt.Client(
            "127.0.0.1", secure_broker.port, username="reader", password=reader_secret
        ) as reader:
            await reader.subscribe("fleet/#", qos=1)
            # Registered and published in one run: each device is let in once broker sync has
            # reloaded the broker.
            code, said = await simulate(
                *tls, *fleet, *since(120), "--flood", "--count", "30",
                "--register", database_url, "--device-logins", str(logins_file),
            )  # fmt: skip
            assert code == 0, said
            assert "registered 6 devices: 6 created, 0 updated, 0 unchanged" in said
            assert "6 new secrets" in said
            assert stat.S_IMODE(logins_file.stat().st_mode) == 0o600
            logins = read_device_logins(logins_file)
            assert set(logins) == usernames
            assert await topics(reader, 30) == {topic: 5 for topic in each}

            # Later runs reuse the file; registering again changes nothing.
            code, said = await simulate(
                *tls, *fleet, *since(100), "--flood", "--count", "6",
                "--device-logins", str(logins_file),
            )  # fmt: skip
            assert code == 0, said
            assert await topics(reader, 6) == each
            code, said = await simulate(
                *tls, *fleet, *since(90), "--flood", "--count", "6",
                "--register", database_url, "--device-logins", str(logins_file),
            )  # fmt: skip
            assert code == 0, said
            assert "0 created, 0 updated, 6 unchanged" in said
            assert "0 new secrets" in said
            assert read_device_logins(logins_file) == logins
            assert await topics(reader, 6) == each

            # One device's login publishing the whole fleet over one connection: the broker
            # takes its own readings only (and acknowledges the others, as MQTT 3.1.1 does).
            meter = "meter/MTR-8100"
            one_login = f"mqtts://{quote(meter, safe='')}:{quote(logins[meter])}@{broker}"
            code, said = await simulate(
                "--mqtt-url", one_login, "--ca-file", str(secure_broker.ca_file), *fleet,
                *since(80), "--flood", "--count", "12",
            )  # fmt: skip
            assert code == 0, said
            assert "acked 12" in said
            async with aiomqtt.Client(
                "127.0.0.1", secure_broker.port, username=meter, password=logins[meter]
            ) as device:
                await device.publish(f"fleet/{meter}", b"end", qos=1)
            assert await topics(reader, 0, until=b"end") == {f"fleet/{meter}": 3}

            # A device disabled while the fleet reports is disconnected, then refused and its
            # readings dropped; the others go on.
            arrivals: list[tuple[float, str]] = []
            loop = asyncio.get_running_loop()

            async def record() -> None:
                async for message in reader.messages:
                    arrivals.append((loop.time(), str(message.topic)))

            live = [*tls, *fleet, "--rate", "30", "--duration", "8"]
            async with asyncio.TaskGroup() as tasks:
                running = tasks.create_task(
                    simulate(*live, "--device-logins", str(logins_file)), name="simulator"
                )
                recorder = tasks.create_task(record(), name="reader")
                await wait_until(
                    lambda: asyncio.sleep(0, result=len(arrivals) >= 12), what="some readings"
                )
                disable = "UPDATE vehicle SET state = 'disabled' WHERE name = 'EV-8101'"
                await execute(database_url, disable)
                disabled_at = loop.time()
                code, said = await running
                recorder.cancel()
            assert code == 1, said  # some of its readings were not delivered
            assert "the broker refused vehicle/EV-8101" in said
            later = Counter(topic for at, topic in arrivals if at > disabled_at + 2.0)
            assert later["fleet/vehicle/EV-8101"] == 0, arrivals
            assert later["fleet/vehicle/EV-8102"] > 0, arrivals
