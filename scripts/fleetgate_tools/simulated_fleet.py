"""A simulated EV fleet: charging sessions that produce meter and vehicle readings, with the faults
a real fleet has (failing chargers, hot batteries, silent meters, duplicate, late and malformed
messages). Generation only; ``fleetgate_tools.simulate`` publishes what this produces, and
registers its devices (``Fleet.devices``) with their true nominal voltage."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from gateway.registry import DeviceRecord

HEALTHY_EFFICIENCY: Final = (0.88, 0.94)  # DC into the battery / AC from the grid
FAULTY_EFFICIENCY: Final = (0.70, 0.84)
OVERHEAT_TEMP: Final = (56.0, 62.0)  # a battery that runs hot while charging, in C
NORMAL_CHARGING_TEMP: Final = (30.0, 42.0)
AMBIENT_TEMP: Final = 20.0
CHARGER_POWER_KW: Final = (7.4, 11.0, 22.0, 50.0)
# A meter's grid connection: (nominal voltage, phases), single-phase 230 V or three-phase 400 V;
# its readings stay within a few volts of the nominal.
GRID_CONNECTIONS: Final = ((230.0, 1), (400.0, 3))
SIMULATED_SITE: Final = "simulator"  # the site of the devices it registers
LATE_BY_MESSAGES: Final = (5, 50)  # a late message arrives this many messages after its turn

_encode = msgspec.json.Encoder().encode


@dataclasses.dataclass(frozen=True, slots=True)
class FleetProfile:
    """What to simulate: how many chargers, how often they report, and how often things go wrong.
    Shares are probabilities (per device, or per message for duplicate/late/malformed)."""

    devices: int = 100
    first_device: int = 1  # device numbers, so that several publishers can split one fleet
    interval_s: float = 60.0
    array: int = 1  # readings per message; above 1, a JSON array as a charger flushing its buffer
    faulty_share: float = 0.05
    overheat_share: float = 0.02
    silent_share: float = 0.02
    duplicate_share: float = 0.001
    late_share: float = 0.001
    malformed_share: float = 0.001
    seed: int | None = None

    def time_for(self, messages: int) -> timedelta:
        """Simulated time it takes the fleet to send this many messages (two per round of
        reports; with arrays, each device sends once every ``array`` rounds)."""
        rounds = -(-messages // (2 * self.devices)) * self.array
        return timedelta(seconds=rounds * self.interval_s)


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish, and what it holds."""

    topic: str
    payload: bytes
    readings: int
    at: datetime  # when the device sends it (its latest reading's timestamp)
    malformed: bool = False


def meter_name(number: int) -> str:
    return f"MTR-{number:04d}"


def vehicle_name(number: int) -> str:
    return f"EV-{number:04d}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(slots=True)
class Charger:
    """A meter (AC from the grid) and the vehicle it charges (DC into the battery), one to one."""

    number: int
    efficiency: float
    faulty: bool
    overheats: bool
    silent_after: int | None  # readings after which the meter stops reporting
    capacity_kwh: float
    power_kw: float
    soc: float
    target_soc: float
    charging: bool
    idle_intervals: int
    battery_temp: float
    grid: tuple[float, int]  # the meter's: nominal voltage and phases (GRID_CONNECTIONS)
    intervals: int = 0
    meter_buffer: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    vehicle_buffer: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def create(cls, number: int, profile: FleetProfile, rng: random.Random) -> Charger:
        faulty = rng.random() < profile.faulty_share
        low, high = FAULTY_EFFICIENCY if faulty else HEALTHY_EFFICIENCY
        silent = rng.random() < profile.silent_share
        return cls(
            number=number,
            efficiency=rng.uniform(low, high),
            faulty=faulty,
            overheats=rng.random() < profile.overheat_share,
            silent_after=rng.randint(0, 30) if silent else None,
            capacity_kwh=rng.choice((40.0, 58.0, 77.0, 100.0)),
            power_kw=rng.choice(CHARGER_POWER_KW),
            soc=rng.uniform(10, 70),
            target_soc=rng.uniform(80, 100),
            charging=rng.random() < 0.5,
            idle_intervals=rng.randint(1, 30),
            battery_temp=rng.uniform(15, 25),
            grid=rng.choice(GRID_CONNECTIONS),
        )

    @property
    def voltage(self) -> float:
        """The meter's nominal voltage, around which its readings lie."""
        return self.grid[0]

    def devices(self) -> tuple[DeviceRecord, DeviceRecord]:
        """Its meter and vehicle as the registry should know them."""
        tags = ("simulated",)
        meter = DeviceRecord(
            "meter",
            meter_name(self.number),
            site=SIMULATED_SITE,
            tags=tags,
            nominal_voltage_v=self.voltage,
            phases=self.grid[1],
        )
        vehicle = DeviceRecord(
            "vehicle",
            vehicle_name(self.number),
            site=SIMULATED_SITE,
            tags=tags,
            battery_capacity_kwh=self.capacity_kwh,
        )
        return meter, vehicle

    @property
    def meter_silent(self) -> bool:
        return self.silent_after is not None and self.intervals > self.silent_after

    def advance(self, seconds: float, rng: random.Random) -> tuple[float, float]:
        """One interval: (AC kWh drawn by the meter, DC kWh into the battery)."""
        self.intervals += 1
        if not self.charging:
            self.soc = max(5.0, self.soc - rng.uniform(0, 0.3) * seconds / 60)  # driving
            self.battery_temp += (AMBIENT_TEMP - self.battery_temp) * 0.1 + rng.gauss(0, 0.2)
            self.idle_intervals -= 1
            if self.idle_intervals <= 0:
                self.charging = True
                self.target_soc = rng.uniform(80, 100)
            return rng.uniform(0, 0.002) * seconds / 60, 0.0  # the charger's standby draw
        taper = 1.0 if self.soc < 80 else max(0.15, (100 - self.soc) / 20)
        room_kwh = (self.target_soc - self.soc) / 100 * self.capacity_kwh
        dc = max(0.0, min(self.power_kw * taper * seconds / 3600, room_kwh))
        self.soc = min(100.0, self.soc + dc / self.capacity_kwh * 100)
        low, high = FAULTY_EFFICIENCY if self.faulty else HEALTHY_EFFICIENCY
        efficiency = min(high, max(low, self.efficiency + rng.gauss(0, 0.005)))
        hot_low, hot_high = OVERHEAT_TEMP if self.overheats else NORMAL_CHARGING_TEMP
        target_temp = (hot_low + hot_high) / 2
        self.battery_temp += (target_temp - self.battery_temp) * 0.2 + rng.gauss(0, 0.3)
        if self.soc >= self.target_soc - 0.01:
            self.charging = False
            self.idle_intervals = rng.randint(5, 60)
        return dc / efficiency, dc


class Fleet:
    """Chargers reporting in turn, each once per interval, their reports spread evenly."""

    def __init__(self, profile: FleetProfile, start: datetime) -> None:
        self.profile = profile
        self.start = start
        self._rng = random.Random(profile.seed)
        self.chargers = [
            Charger.create(profile.first_device + index, profile, self._rng)
            for index in range(profile.devices)
        ]
        self._late: list[tuple[int, Message]] = []  # (release after this many sent, message)
        self._sent = 0

    def devices(self) -> list[DeviceRecord]:
        """Every meter and vehicle of the fleet, with its nominal voltage or battery capacity."""
        return [device for charger in self.chargers for device in charger.devices()]

    def stream(self) -> Iterator[Message]:
        """Messages in the order the fleet sends them, for ever, from ``start`` on."""
        interval = self.profile.interval_s
        devices = len(self.chargers)
        round_number = 0
        while True:
            for index in range(devices):
                offset = (round_number + index / devices) * interval
                yield from self.report(index, self.start + timedelta(seconds=offset))
            round_number += 1

    def report(self, index: int, at: datetime) -> list[Message]:
        """One interval of charger ``index`` ending at ``at``: the messages to send now (none
        while a charger fills its array buffer; maybe a duplicate or an earlier late one)."""
        charger = self.chargers[index]
        ac, dc = charger.advance(self.profile.interval_s, self._rng)
        stamp = rfc3339(at)
        meter_id, vehicle_id = meter_name(charger.number), vehicle_name(charger.number)
        if not charger.meter_silent:
            charger.meter_buffer.append(
                {
                    "meterId": meter_id,
                    "kwhConsumedAc": round(ac, 6),
                    "voltage": round(charger.voltage + self._rng.gauss(0, 2), 1),
                    "timestamp": stamp,
                }
            )
        charger.vehicle_buffer.append(
            {
                "vehicleId": vehicle_id,
                "soc": round(charger.soc, 2),
                "kwhDeliveredDc": round(dc, 6),
                "batteryTemp": round(charger.battery_temp, 1),
                "timestamp": stamp,
            }
        )
        ready: list[Message] = []
        for topic, buffer in (
            (f"fleet/meter/{meter_id}", charger.meter_buffer),
            (f"fleet/vehicle/{vehicle_id}", charger.vehicle_buffer),
        ):
            if len(buffer) >= self.profile.array:
                ready.append(self._message(topic, buffer, at))
                buffer.clear()
        return self._deliver(ready)

    def _message(self, topic: str, buffer: list[dict[str, Any]], at: datetime) -> Message:
        payload = _encode(buffer if self.profile.array > 1 else buffer[0])
        if self._rng.random() < self.profile.malformed_share:
            return Message(topic, self._corrupt(payload), len(buffer), at, malformed=True)
        return Message(topic, payload, len(buffer), at)

    def _corrupt(self, payload: bytes) -> bytes:
        """What broken firmware sends: cut JSON, NaN, a missing field, a negative reading."""
        kind = self._rng.randrange(4)
        if kind == 0:
            return payload[: len(payload) // 2]
        if kind == 1:
            return payload.replace(b'"timestamp":', b'"timestamp_":', 1)
        if kind == 2:
            return payload.replace(b'"voltage":', b'"voltage":NaN,"v":', 1).replace(
                b'"soc":', b'"soc":NaN,"s":', 1
            )
        return payload.replace(b'"kwhConsumedAc":', b'"kwhConsumedAc":-1', 1).replace(
            b'"kwhDeliveredDc":', b'"kwhDeliveredDc":-1', 1
        )

    def _deliver(self, ready: list[Message]) -> list[Message]:
        out: list[Message] = []
        for message in ready:
            roll = self._rng.random()
            if roll < self.profile.late_share:
                self._late.append((self._sent + self._rng.randint(*LATE_BY_MESSAGES), message))
                continue
            out.append(message)
            if roll < self.profile.late_share + self.profile.duplicate_share:
                out.append(message)  # no PUBACK seen in time: the device sends it again
        self._sent += len(out)
        if self._late:
            due = [late for late in self._late if late[0] <= self._sent]
            self._late = [late for late in self._late if late[0] > self._sent]
            out.extend(message for _, message in due)
        return out
