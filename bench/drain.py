"""``python -m bench.drain``: drain one backlog and show the gateway's memory and rate over time.

For investigating (d) of bench.ingest: try broker in-flight windows and gateway settings, and
optionally record a py-spy profile of the draining gateway.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.harness import (
    Database,
    GatewayProcess,
    PublisherJob,
    Publishers,
    proc_status_kb,
    wait_for_gateway,
)
from tests.services import Mosquitto, Postgres

TRACED_GATEWAY = """
import sys, threading, time, tracemalloc
tracemalloc.start(1)
def dump():
    time.sleep(10)
    base = tracemalloc.take_snapshot()
    for n in range(1, 1000):
        time.sleep(10)
        diff = tracemalloc.take_snapshot().compare_to(base, "lineno")[:15]
        with open(f"{out}/tracemalloc_{{n:03d}}.txt", "w") as f:
            f.write(f"traced now {{tracemalloc.get_traced_memory()}}\\n")
            f.write("\\n".join(str(stat) for stat in diff) + "\\n")
threading.Thread(target=dump, daemon=True).start()
from gateway.__main__ import main
sys.exit(main())
"""


TRIMMED_GATEWAY = """
import ctypes, sys, threading, time
libc = ctypes.CDLL("libc.so.6")
def trim():
    while True:
        time.sleep(1)
        libc.malloc_trim(0)
threading.Thread(target=trim, daemon=True).start()
from gateway.__main__ import main
sys.exit(main())
"""


CENSUS_GATEWAY = """
import collections, gc, sys, threading, time
def census():
    for n in range(1, 1000):
        time.sleep(10)
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        with open(f"{out}/census_{{n:03d}}.txt", "w") as f:
            f.write(f"{{sum(counts.values())}} objects\\n")
            f.write("\\n".join(f"{{c:9d}} {{t}}" for t, c in counts.most_common(15)) + "\\n")
threading.Thread(target=census, daemon=True).start()
from gateway.__main__ import main
sys.exit(main())
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("--backlog", type=int, default=300_000)
    parser.add_argument("--inflight", type=int, help="broker max_inflight_messages override")
    parser.add_argument("--setting", action="append", default=[], help="gateway NAME=VALUE")
    parser.add_argument("--py-spy", type=float, help="record this many seconds of py-spy")
    parser.add_argument(
        "--malloc-trim", action="store_true", help="call glibc malloc_trim(0) every second"
    )
    parser.add_argument(
        "--census", action="store_true", help="write the most numerous object types every 10 s"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="write allocation growth since 10 s in, every 10 s",
    )
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="fleetgate-drain-"))
    extra = f"max_inflight_messages {args.inflight}" if args.inflight else ""
    settings = dict(item.split("=", 1) for item in args.setting)
    postgres = Postgres()
    mosquitto = Mosquitto(extra_config=extra)
    gateway = GatewayProcess(
        postgres.url, mosquitto.url, f"drain-{uuid.uuid4().hex[:6]}", logs / "gw.log", settings
    )
    wrap = (
        TRACED_GATEWAY
        if args.tracemalloc
        else TRIMMED_GATEWAY
        if args.malloc_trim
        else CENSUS_GATEWAY
        if args.census
        else None
    )
    if wrap:
        wrapper = logs / "wrapped_gateway.py"
        wrapper.write_text(wrap.format(out=logs))
        gateway.argv = [str(wrapper)]
        print(f"allocation snapshots: {logs}/tracemalloc_*.txt")
    db: Database | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        gateway.start()
        db = Database(postgres.url)
        wait_for_gateway(gateway, db, mosquitto.url)
        gateway.stop()
        baseline = db.committed()
        jobs = [
            PublisherJob(mosquitto.url, 1 + n * 1000, 1000, count=args.backlog // 2)
            for n in range(2)
        ]
        with Publishers(jobs) as publishers:
            publishers.go()
            publishers.results(timeout_s=3600)
        gateway.start()
        started = time.monotonic()
        if args.py_spy:
            svg = logs / "drain.txt"
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(gateway.pid), "--duration", str(int(args.py_spy)), "--format", "raw",
                 "--output", str(svg), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        print(f"gateway pid {gateway.pid}")
        print(" seconds  committed  msg/s(last 1 s)  VmRSS MB  VmHWM MB")
        last = (0.0, 0)
        while True:
            time.sleep(1.0)
            now = time.monotonic() - started
            committed = db.committed() - baseline
            rate = (committed - last[1]) / (now - last[0])
            rss = proc_status_kb(gateway.pid, "VmRSS") / 1024
            hwm = proc_status_kb(gateway.pid, "VmHWM") / 1024
            print(f"{now:8.1f} {committed:10,} {rate:16,.0f} {rss:9.0f} {hwm:9.0f}", flush=True)
            last = (now, committed)
            if committed >= args.backlog or (now > 30 and rate == 0):
                break
        print(f"drained {committed:,} in {now:.1f} s: {committed / now:,.0f} msg/s")
        if spy is not None:
            spy.wait(timeout=120)
            print(f"py-spy raw profile: {logs / 'drain.txt'}")
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        gateway.stop()
        if db is not None:
            db.close()
        mosquitto.close()
        postgres.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
