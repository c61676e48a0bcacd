"""Simulator: reads/s and CPU µs per read of `manage.py simulate`, lean vs pymodbus, server pinned to one core.

For each server mode (`--lean`, and pymodbus, the default) this starts `manage.py simulate` on a
scratch database, pins it to core 1 (os.sched_setaffinity on its pid) and this process, the load
generator, to core 0. The load generator is a plain asyncio client with hand-written frames
(FC03, the generic profile's 16-register fast block), one request in flight per connection:
- saturating: 32 connections to 32 charge points, each sending its next read as soon as the answer
  arrives, so the pinned server core is the limit: reads/s is the server's capacity;
- 1 Hz fleet: N charge points each read once a second (staggered), as the poller reads them; every
  read then follows a change of state, so the words are encoded afresh (the expensive case), and
  the ticking of the whole fleet is in the CPU figure.

Each window is measured 3 times on the running server (median reported): reads/s over the window,
and the server's utime+stime (/proc/<pid>/stat) over the window per read; reads_per_core_s is
1e6 / cpu_us_per_read, what one core would serve at that cost. The machine is shared and noisy
(2 cores, other benchmarks and helpers): trust CPU per read more than rates. The saturating rate
is also bounded by the load generator, which costs about as much per read as the lean server.

    .venv/bin/python bench/simulator.py            # ~70 s
    .venv/bin/python bench/simulator.py --quick    # ~20 s
"""

import argparse
import asyncio
import contextlib
import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402 - the path above makes bench importable when run as a script
    cpu_seconds,
    embedded_env,
    free_port_range,
    log_tail,
    median_rows,
    port_open,
    print_rows,
    quick_default,
    rounded,
    run_manage,
    scratch_var_dir,
    spawn_manage,
    stop_process,
    wait_until,
)

TITLE = "Simulator: reads/s and CPU per read, lean vs pymodbus, server pinned to one core"
SERVER_CORE, CLIENT_CORE = 1, 0
PROFILE = "generic-ev-charger"
UNIT_ID = 1
READ_ADDRESS, READ_COUNT = 0, 16  # the generic profile's fast block
RESPONSE_BYTES = 9 + 2 * READ_COUNT  # MBAP (7) + function code + byte count + the words
SATURATING_CONNECTIONS = 32
RUNS = 3


class ReadLoop(asyncio.Protocol):
    """One connection reading the same block, either back to back or once per interval."""

    def __init__(self, stats: dict[str, int], interval_s: float | None, offset_s: float) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self.offset_s = offset_s
        self.transport: asyncio.Transport | None = None
        self.pending = 0
        self.transaction = 0
        self.next_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        loop = asyncio.get_running_loop()
        if self.interval_s is None:
            self.send()
        else:
            self.next_at = loop.time() + self.offset_s
            loop.call_at(self.next_at, self.send_paced)

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transaction = (self.transaction + 1) & 0xFFFF
        self.transport.write(struct.pack(">HHHBBHH", self.transaction, 0, 6, UNIT_ID, 3, READ_ADDRESS, READ_COUNT))

    def send_paced(self) -> None:
        assert self.interval_s is not None
        self.send()
        self.next_at += self.interval_s
        asyncio.get_running_loop().call_at(self.next_at, self.send_paced)

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        while self.pending >= RESPONSE_BYTES:
            self.pending -= RESPONSE_BYTES
            self.stats["reads"] += 1
            if self.interval_s is None:
                self.send()
        if data[7] != 3:
            self.stats["errors"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def measure(
    pid: int, ports: list[int], interval_s: float | None, window_s: float, runs: int
) -> list[dict[str, float]]:
    """Open a connection per port, then measure `runs` windows of reads and server CPU."""
    loop = asyncio.get_running_loop()
    stats = {"reads": 0, "errors": 0}
    transports = []
    try:
        for index, port in enumerate(ports):
            offset_s = (interval_s or 0.0) * index / len(ports)
            transport, _ = await loop.create_connection(
                lambda o=offset_s: ReadLoop(stats, interval_s, o), "127.0.0.1", port
            )
            transports.append(transport)
        await asyncio.sleep(max(1.0, interval_s or 0.0))  # warm-up: every connection has read at least once
        rows = []
        for _ in range(runs):
            reads, cpu, started = stats["reads"], cpu_seconds(pid, tree=False), time.monotonic()
            await asyncio.sleep(window_s)
            elapsed = time.monotonic() - started
            done, used = stats["reads"] - reads, cpu_seconds(pid, tree=False) - cpu
            rows.append(
                {
                    "reads_per_s": done / elapsed,
                    "cpu_us_per_read": used / done * 1e6 if done else float("nan"),
                    "server_cpu_percent": 100 * used / elapsed,
                }
            )
        if stats["errors"]:
            raise RuntimeError(f"{stats['errors']} reads were answered with an exception")
        return rows
    finally:
        for transport in transports:
            transport.close()


def run_case(env: dict[str, str], work: Path, lean: bool, count: int, interval_s: float | None, window_s: float):
    """Start the simulator for one case, measure RUNS windows, stop it; the median row."""
    base = free_port_range(count)
    log = work / f"simulate-{'lean' if lean else 'pymodbus'}-{count}.log"
    args = ["simulate", "--count", str(count), "--base-port", str(base), "--profile", PROFILE, "--seed", "1"]
    server = spawn_manage([*args, "--lean"] if lean else args, env, log)
    try:
        os.sched_setaffinity(server.pid, {SERVER_CORE})
        wait_until(
            lambda: server.poll() is not None or port_open(base + count - 1),
            120,
            f"simulate on {base}..{base + count - 1}",
        )
        if server.poll() is not None:
            raise RuntimeError(f"simulate exited with {server.returncode}:\n{log_tail(log)}")
        rows = asyncio.run(measure(server.pid, list(range(base, base + count)), interval_s, window_s, RUNS))
    finally:
        stop_process(server)
    load = f"{count} charge points at 1 Hz" if interval_s else f"saturating, {count} connections"
    row = median_rows(rows)
    # What one core would serve at this CPU cost: the rate itself is bounded by the load generator
    # and by whatever else runs on the shared cores.
    row["reads_per_core_s"] = 1e6 / row["cpu_us_per_read"]
    return {"server": "lean" if lean else "pymodbus", "load": load} | rounded(row)


def run(quick: bool) -> list[dict]:
    """Lean and pymodbus servers, saturating and at 1 Hz; medians of 3 windows each."""
    window_s = 1.0 if quick else 3.0
    fleet = 300 if quick else 2000
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CORE})
    try:
        with scratch_var_dir("evdash-bench-simulator-") as var_dir:
            env = embedded_env(var_dir)
            run_manage(["migrate", "-v", "0"], env)
            rows = []
            for lean in (True, False):
                rows.append(run_case(env, var_dir, lean, SATURATING_CONNECTIONS, None, window_s))
                if lean or not quick:  # the quick run skips starting a large pymodbus fleet
                    rows.append(run_case(env, var_dir, lean, fleet, 1.0, window_s))
            return rows
    finally:
        os.sched_setaffinity(0, previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=quick_default(), help="Shorter windows, smaller fleet.")
    options = parser.parse_args()
    print_rows(TITLE, run(options.quick))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
