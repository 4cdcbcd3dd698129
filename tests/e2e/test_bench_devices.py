"""bench.devices at a tiny size: it runs all three parts against its own private services and
prints every figure (a smoke test of the benchmark, not a timing)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.services import PROJECT

TINY = ["--devices", "20", "--messages", "1000", "--rounds", "1", "--fleet", "50"]


def test_the_device_benchmark_runs_and_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.devices", *TINY, "--publishers", "1"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for figure in (
        r"\(1\) import 20 devices over HTTP until all are connected .* s to the last CONNACK",
        r"\(1\) broker RSS with 20 logins: idle / all connected .* MB / .* MB",
        r"\(2\) storm: 20 devices connect at once .* all connected in .* logins/s",
        r"\(2\) a device added while 20 are connected .* 0 connected devices dropped",
        r"\(3\) single-reading QoS 1, authentication on .* msg/s median",
        r"\(3\) single-reading QoS 1, authentication off .* msg/s median",
        r"\(3\) on / off .* median of the rounds' ratios",
        r"check: dead letters, on / off .* \| 0 / 0$",
    ):
        assert re.search(figure, table, re.MULTILINE), f"{figure!r} not in\n{table}"
