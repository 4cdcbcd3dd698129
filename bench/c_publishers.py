"""The benchmark's C publishers: one ``mosquitto_pub -l -q 1 -M WINDOW`` process per topic, each
reading its device's payloads (one a line) from a file written before the clock starts.

Python publishers top out near 35k msg/s on the 2-core machine, about half of what the broker
delivers to the C subscriber: measured with them, a ceiling was the publishers'. One
``mosquitto_pub -l`` with an unbounded window loses messages at QoS 1 (FACTS.md), so each topic
gets its own bounded process.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetgate_tools.simulated_fleet import Fleet, FleetProfile

WINDOW = 200  # in-flight messages per process (-M)


def fleet_payloads(first_device: int, chargers: int, count: int) -> dict[str, list[bytes]]:
    """``count`` single-reading messages of ``chargers`` chargers (a meter and a vehicle each),
    by topic, in the order each device sends them."""
    profile = FleetProfile(
        devices=chargers,
        first_device=first_device,
        duplicate_share=0.0,
        late_share=0.0,
        malformed_share=0.0,
        silent_share=0.0,
        seed=first_device,
    )
    now = datetime.now(UTC).replace(microsecond=0)
    fleet = Fleet(profile, now - profile.time_for(count) - timedelta(minutes=1))
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for message in itertools.islice(fleet.stream(), count):
        by_topic[message.topic].append(message.payload)
    return by_topic


class CPublishers:
    """One ``mosquitto_pub`` per topic, started together by ``go()``; ``wait()`` reaps them all
    and returns the wall seconds from ``go()`` to the last exit. ``cpu_s`` is their CPU time."""

    def __init__(self, port: int, folder: Path, payloads: dict[str, list[bytes]]):
        self.port = port
        self.files: dict[str, Path] = {}
        folder.mkdir(parents=True, exist_ok=True)
        for number, (topic, lines) in enumerate(sorted(payloads.items())):
            path = folder / f"topic-{number}.txt"
            path.write_bytes(b"\n".join(lines) + b"\n")
            self.files[topic] = path
        self.count = sum(len(lines) for lines in payloads.values())
        self.processes: list[subprocess.Popen[bytes]] = []
        self.cpu_s = 0.0
        self._started = 0.0

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def go(self) -> float:
        self._started = time.monotonic()
        tag = uuid.uuid4().hex[:6]
        for number, (topic, path) in enumerate(self.files.items()):
            client = f"bench-cpub-{tag}-{number}"
            argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1",
                    "-M", str(WINDOW), "-l", "-t", topic, "-i", client]  # fmt: skip
            with path.open("rb") as lines:
                self.processes.append(subprocess.Popen(argv, stdin=lines))
        return self._started

    def wait(self, timeout_s: float = 600) -> float:
        """Reap every process (their CPU from wait4, as they leave /proc); the elapsed seconds."""
        deadline = time.monotonic() + timeout_s
        pending = {process.pid: process for process in self.processes}
        while pending:
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"{len(pending)} mosquitto_pub processes still running")
            for pid in list(pending):
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    pending.pop(pid).returncode = os.waitstatus_to_exitcode(status)
                    self.cpu_s += usage.ru_utime + usage.ru_stime
            time.sleep(0.005)
        failed = [p.returncode for p in self.processes if p.returncode]
        if failed:
            raise RuntimeError(f"mosquitto_pub exited with {failed}")
        return time.monotonic() - self._started

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
