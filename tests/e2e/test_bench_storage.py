"""bench.storage at its --quick size: bytes per row before and after compaction beside the floor,
and a retention run and a compaction timed while a writer ingests (a smoke test of the benchmark,
not a timing)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.services import PROJECT


def test_the_storage_benchmark_runs_and_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.storage", "--quick", "--old-days", "2"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for figure in (
        r"^\| `meter_reading` \| .* \| [\d.]+ \+ [\d.]+ = [\d.]+ B \|$",
        r"^\| `vehicle_reading` \| .* \| [\d.]+ \+ [\d.]+ = [\d.]+ B \|$",
        r"^floor: heap = block / .* pg_attribute",
        r"^\| retention run \| [\d.]+ s \| \d+, \d+ ms, \d+ ms \| 4 partitions dropped",
        r"^\| compaction \| [\d.]+ s \| \d+, \d+ ms, \d+ ms \| meter_reading_\d{8} .* s, vehicle",
    ):
        assert re.search(figure, table, re.MULTILINE), f"{figure!r} not in\n{table}"
