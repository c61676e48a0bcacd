"""Poller at scale: N simulated charge points at 1 Hz, one poller process pinned to one core.

For each fleet size and profile mix this starts, on a scratch database:
- the embedded broker (Tansu) and the simulator on core 1 (`manage.py simulate`, lean and in
  several processes when the simulator offers it);
- `manage.py runpoller` pinned to core 0, with a stats line every few seconds.

After a warm-up it measures over a steady window:
- polls/s: records the poller published (from its stats lines);
- lateness p50/p99: how late polls started against their schedule (median of the stats lines);
- CPU µs per record: the poller's utime+stime (/proc/<pid>/stat) over the window / records;
- RSS: VmRSS at the end of the window.

The machine is shared and noisy (2 cores): figures are per unit of work, and a busy neighbour
shows up in lateness first.

    .venv/bin/python bench/poller.py --quick
    .venv/bin/python bench/poller.py --sizes 500,2000 --mixes generic --window 30
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port_range  # noqa: E402 (after the path set-up)

TITLE = "Poller: N charge points at 1 Hz, one process pinned to one core"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
MANAGE = str(ROOT / "manage.py")
POLLER_CORE, OTHERS_CORE = 0, 1
SHIPPED = (
    "generic-ev-charger",
    "alfen-eve",
    "abb-terra-ac",
    "keba-p30",
    "mennekes-amtron-hcc3",
    "schneider-evlink-pro-ac",
    "vestel-evc04",
    "webasto-next",
)
MIXES = {"generic": ("generic-ev-charger",), "mixed": SHIPPED[1:]}
STATS_INTERVAL_S = 5
SIMULATOR_MAX_PER_PROCESS = 1000  # the plain simulator's limit
STATS_LINE = re.compile(
    r"poller stats: charge_points=(\d+) records=(\d+) lateness_p50_ms=([\d.]+) lateness_p99_ms=([\d.]+)"
)

REGISTER_FLEET = """
from django.db import transaction
from gateway.models import ChargePoint, DeviceProfile, Site
slugs = {slugs!r}
profiles = [DeviceProfile.objects.get(slug=slug) for slug in slugs]
with transaction.atomic():
    site = Site.objects.create(slug="bench", name="Bench")
    points = []
    for i in range({count}):
        profile = profiles[i % len(profiles)]
        points.append(ChargePoint(slug=f"cp-{{i:05d}}", name=f"cp {{i}}", site=site, host="127.0.0.1",
                                  port={base_port} + i, unit_id=profile.default_unit_id, profile=profile,
                                  poll_interval_ms=1000))
    intervals = {{}}
    for cp in points:  # a paced charger (KEBA) gets the shortest interval its pacing allows
        if cp.profile_id not in intervals:
            intervals[cp.profile_id] = cp.fitting_poll_interval_ms()
        cp.poll_interval_ms = intervals[cp.profile_id]
    ChargePoint.objects.bulk_create(points)
print(sum(1000 / cp.poll_interval_ms for cp in points))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def simulator_options() -> set[str]:
    help_text = subprocess.run(
        [PYTHON, MANAGE, "simulate", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return {option for option in ("--lean", "--processes") if option in help_text}


def start_simulators(count: int, base_port: int, slugs: tuple[str, ...], env: dict, logs: Path) -> list:
    """The simulated fleet on the other core: lean and multi-process when the simulator offers it."""
    options = simulator_options()
    pin = ["taskset", "-c", str(OTHERS_CORE)]
    profiles = ["--profiles", ",".join(slugs)]
    if "--lean" in options and "--processes" in options:
        processes = max(1, min(4, count // 1000))
        commands = [
            [
                *pin,
                PYTHON,
                MANAGE,
                "simulate",
                "--lean",
                "--processes",
                str(processes),
                "--count",
                str(count),
                "--base-port",
                str(base_port),
                *profiles,
                "-v",
                "0",
            ]
        ]
    else:  # the plain simulator: at most 1000 a process, the profile cycle kept across processes
        commands = []
        for start in range(0, count, SIMULATOR_MAX_PER_PROCESS):
            n = min(SIMULATOR_MAX_PER_PROCESS, count - start)
            rotated = slugs[start % len(slugs) :] + slugs[: start % len(slugs)]
            commands.append(
                [
                    *pin,
                    PYTHON,
                    MANAGE,
                    "simulate",
                    "--count",
                    str(n),
                    "--base-port",
                    str(base_port + start),
                    "--profiles",
                    ",".join(rotated),
                    "-v",
                    "0",
                ]
            )
    return [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=(logs / f"simulator-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i, command in enumerate(commands)
    ]


def wait_listening(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


def stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def stats_lines(log: Path) -> list[tuple[float, int, int, float, float]]:
    """(log position, charge points, records, p50, p99) of every stats line so far."""
    found = []
    for match in STATS_LINE.finditer(log.read_text(errors="replace")):
        cps, records, p50, p99 = match.groups()
        found.append((match.start(), int(cps), int(records), float(p50), float(p99)))
    return found


def scrape_metrics(port: int, every_s: float, stop: threading.Event, scrapes: list[int]) -> None:
    """What Prometheus does to the poller: GET /metrics every `every_s` (its CPU counts as the poller's)."""
    while not stop.wait(every_s):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                scrapes.append(len(response.read()))
        except OSError:
            scrapes.append(0)


def measure(count: int, mix: str, *, warmup_s: float, window_s: float, scrape_s: float | None = None) -> dict:
    """One fleet size and profile mix: start everything, measure a steady window, stop.

    scrape_s: run the poller with --metrics-port and scrape it at this interval during the window.
    """
    from gateway.kafka.embedded import start_broker, stop_broker

    slugs = MIXES[mix]
    with tempfile.TemporaryDirectory(prefix="evdash-bench-poller-") as scratch:
        scratch_dir = Path(scratch)
        kafka_port = free_port()
        base_port = free_port_range(count)
        env = os.environ | {
            "EVDASH_VAR_DIR": scratch,
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
            "KAFKA_ENABLE_IDEMPOTENCE": "0",
            "EVDASH_POLLER_STATS_INTERVAL_S": str(STATS_INTERVAL_S),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DATABASE_URL", None)
        subprocess.run([PYTHON, MANAGE, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        expected = subprocess.run(
            [PYTHON, MANAGE, "shell", "-c", REGISTER_FLEET.format(slugs=slugs, count=count, base_port=base_port)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        broker = start_broker(port=kafka_port, log_path=scratch_dir / "tansu.log")
        children = []
        try:
            os.sched_setaffinity(broker.pid, {OTHERS_CORE})
            children = start_simulators(count, base_port, slugs, env, scratch_dir)
            wait_listening(base_port + count - 1, 120)
            log = scratch_dir / "poller.log"
            metrics_port = free_port()
            metrics = ["--metrics-port", str(metrics_port)] if scrape_s else []
            poller = subprocess.Popen(
                ["taskset", "-c", str(POLLER_CORE), PYTHON, MANAGE, "runpoller", "-v", "1", *metrics],
                cwd=ROOT,
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            children.append(poller)
            time.sleep(warmup_s)
            seen = len(stats_lines(log))
            scraping, scrapes = threading.Event(), []
            scraper = threading.Thread(target=scrape_metrics, args=(metrics_port, scrape_s, scraping, scrapes))
            if scrape_s:
                scraper.start()
            cpu_start, started = cpu_s(poller.pid), time.monotonic()
            time.sleep(window_s)
            cpu_used, elapsed = cpu_s(poller.pid) - cpu_start, time.monotonic() - started
            scraping.set()
            if scrape_s:
                scraper.join()
                if not scrapes or not all(scrapes):
                    raise RuntimeError(f"scraping the poller's /metrics failed: {scrapes}")
            rss = rss_mb(poller.pid)
            lines = stats_lines(log)[seen:]
            if poller.poll() is not None:
                raise RuntimeError(f"the poller exited ({poller.returncode}): see {log}")
        finally:
            for child in children:
                stop(child)
            stop_broker(broker)
        # Records of the stats intervals inside the window, scaled to the window.
        records = sum(line[2] for line in lines)
        covered_s = len(lines) * STATS_INTERVAL_S
        polls_per_s = records / covered_s if covered_s else float("nan")
        return {
            "charge_points": count,
            "profiles": mix,
            "expected_polls_per_s": round(float(expected), 1),
            "polls_per_s": round(polls_per_s, 1),
            "lateness_p50_ms": round(statistics.median(line[3] for line in lines), 1) if lines else None,
            "lateness_p99_ms": round(statistics.median(line[4] for line in lines), 1) if lines else None,
            "cpu_us_per_record": round(cpu_used / (polls_per_s * elapsed) * 1e6, 1) if lines else None,
            "cpu_percent_of_core": round(100 * cpu_used / elapsed, 1),
            "rss_mb": round(rss, 1),
        } | ({"metrics_scraped_every_s": scrape_s, "scrapes": len(scrapes)} if scrape_s else {})


def run(quick: bool, sizes: tuple[int, ...] | None = None, mixes: tuple[str, ...] | None = None) -> list[dict]:
    """Each fleet size with the generic profile and with the mixed shipped profiles."""
    sizes = sizes or ((500, 2000) if quick else (500, 2000, 5000))
    mixes = mixes or tuple(MIXES)
    warmup_s, window_s = (8.0, 12.0) if quick else (20.0, 40.0)
    return [measure(count, mix, warmup_s=warmup_s, window_s=window_s) for count in sizes for mix in mixes]


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", help="N = 500 and 2,000, short windows")
    parser.add_argument("--sizes", help="comma-separated fleet sizes, e.g. 500,2000,5000")
    parser.add_argument("--mixes", help=f"comma-separated: {', '.join(MIXES)}")
    parser.add_argument("--warmup", type=float, help="seconds before measuring")
    parser.add_argument("--window", type=float, help="seconds measured")
    parser.add_argument(
        "--scrape", type=float, help="run the poller with --metrics-port and scrape /metrics every SCRAPE seconds"
    )
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.sizes.split(",")) if args.sizes else None
    mixes = tuple(args.mixes.split(",")) if args.mixes else None
    if args.warmup or args.window or args.scrape:
        rows = [
            measure(count, mix, warmup_s=args.warmup or 20.0, window_s=args.window or 40.0, scrape_s=args.scrape)
            for count in sizes or (500, 2000, 5000)
            for mix in mixes or tuple(MIXES)
        ]
    else:
        rows = run(args.quick, sizes, mixes)
    for row in rows:
        print("  ".join(f"{key}={value}" for key, value in row.items()))


if __name__ == "__main__":
    main()
