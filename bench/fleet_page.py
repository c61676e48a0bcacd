"""The fleet page in Chromium with 500 and 5,000 charge points updating at 1 Hz, table and tiles.

Production layout: daphne on PostgreSQL with the Redis channel layer. A pusher process sends each
charge point's record once a second through the real live-push path (gateway.live.push:
push_telemetry, one coalesced event per batch, 10 batches a second, as the consumer does), and
Chromium (Debian's, headless, through Playwright) shows the fleet page, logged in.

For each fleet size and view, after a warm-up (the snapshot and the first seconds), it samples
the page's CDP Performance metrics once a second:
- renderer main thread busy % = delta TaskDuration / delta wall time (100% = one core);
- script, layout and style shares of it;
- JSHeapUsedSize over time: start, end, max, and the least-squares slope in MB/min; also the heap
  after a forced garbage collection at the start and at the end (outside the measured window);
- daphne's CPU % over the same window (one socket's worth of server work).

    .venv/bin/python bench/fleet_page.py [--quick] [--sizes 500,5000] [--views table,tiles]
    .venv/bin/python bench/fleet_page.py --minutes 10 --sizes 5000     # heap flatness over 10 min

The machine is shared and noisy (2 cores: the pusher, Redis, daphne and Chromium share them):
read the figures as orders of magnitude and compare rows of one run.
"""

import argparse
import contextlib
import fcntl
import itertools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/fleet_page.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

TITLE = "Fleet page: Chromium main thread and JS heap, charge points at 1 Hz (production layout)"
SIZES = (500, 5000)
VIEWS = ("table", "tiles")
STORAGE_KEY = "evdash.fleet.v1"  # static/gateway/fleet.js
BATCHES_PER_S = 10
# A database and a Redis db of its own: other benchmarks flush theirs while this one runs.
DATABASE_URL = re.sub(r"(/[^/?]+)(\?.*)?$", r"\1_fleet_page\2", common.DATABASE_URL)
REDIS_URL = re.sub(r"/\d+$", "/9", common.REDIS_URL)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Run with manage.py shell: replace the fleet by `count` charge points on 10 sites, and the admin.
SEED = """
from gateway.demo import ensure_admin
from gateway.models import ChargePoint, DeviceProfile, LatestTelemetry, Site
LatestTelemetry.objects.all().delete()
ChargePoint.objects.all().delete()
Site.objects.all().delete()
profile = DeviceProfile.objects.get(slug="generic-ev-charger")
sites = Site.objects.bulk_create(Site(slug=f"site-{{n:02d}}", name=f"Site {{n:02d}}") for n in range(10))
ChargePoint.objects.bulk_create(
    ChargePoint(slug=f"cp-{{i:05d}}", name=f"Bay {{i:05d}}", site=sites[i % 10], profile=profile,
                host="127.0.0.1", port=20000 + i, unit_id=1, poll_interval_ms=1000)
    for i in range({count})
)
ensure_admin({password!r})
"""

# The pusher: every charge point's record once a second, in BATCHES_PER_S batches through the
# product's one push path. A few faulted and offline, the rest charging with a drifting power.
PUSHER = """
import asyncio, json, random, signal, sys, time
import django
django.setup()
from gateway.live.push import push_telemetry
from gateway.models import ChargePoint
from gateway.profiles.decode import TelemetryFields
from gateway.telemetry import build_record

BATCHES_PER_S, COUNT_FILE = int(sys.argv[1]), sys.argv[2]
fleet = list(ChargePoint.objects.values_list("slug", "site__slug").order_by("slug"))
slices = [fleet[n::BATCHES_PER_S] for n in range(BATCHES_PER_S)]
rng = random.Random(7)

def record(slug, site, seq):
    n = int(slug[3:])
    if n % 97 == 1:
        return build_record(charge_point=slug, site=site, profile="generic-ev-charger", seq=seq, fields=None)
    status = "faulted" if n % 97 == 0 else "charging"
    power = 0.0 if status == "faulted" else 3000.0 + rng.random() * 19000.0
    values = {"power_w": power, "session_energy_wh": seq * 3.1, "current_limit_a": 32.0}
    fields = TelemetryFields(status, "C", values, extra={})
    return build_record(charge_point=slug, site=site, profile="generic-ev-charger", seq=seq, fields=fields)

async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pushed, seq, started = 0, 0, time.monotonic()
    while not stop.is_set():
        seq += 1
        for n, batch in enumerate(slices):
            due = started + (seq - 1) + n / BATCHES_PER_S
            delay = due - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            await push_telemetry([record(slug, site, seq) for slug, site in batch])
            pushed += len(batch)
        with open(COUNT_FILE, "w") as out:
            json.dump({"pushed": pushed, "t": time.monotonic()}, out)

asyncio.run(main())
"""


@dataclass
class Plan:
    warmup_s: float
    seconds: float
    # Long runs only: a forced GC and a heap reading this often (the GC's own task counts as busy).
    gc_every_s: float | None = None


# The fleet power chart fills its window (CHART_WINDOW_S in gateway/views.py) in this long after
# the page loads: the heap grows until then by design, so flatness is judged after it.
CHART_WINDOW_S = 600


def plan_for(quick: bool, minutes: float | None) -> Plan:
    if minutes:
        return Plan(warmup_s=15, seconds=minutes * 60, gc_every_s=60)
    return Plan(warmup_s=4, seconds=8) if quick else Plan(warmup_s=10, seconds=45)


@contextlib.contextmanager
def only_run() -> Iterator[None]:
    """Refuse to start while another run of this benchmark is on (`make bench` next to a --minutes run).

    A second run flushes the Redis db under the first one's daphne (the fleet group is lost: before
    the live sockets joined their groups again, the first page then got nothing while it said
    "live") and reseeds the database under it.
    """
    path = Path(tempfile.gettempdir()) / "evdash-bench-fleet_page.lock"
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another bench/fleet_page.py run uses {DATABASE_URL} and {REDIS_URL}: run this one after it"
            ) from None
        yield


@contextlib.contextmanager
def server(env: dict[str, str], log_dir: Path) -> Iterator[tuple[int, int]]:
    """daphne serving the product on a free port: (pid, port)."""
    port = common.free_port()
    daphne = common.spawn_daphne(port, env, log_dir / "daphne.log")
    try:
        yield daphne.pid, port
    finally:
        common.stop_process(daphne)


@contextlib.contextmanager
def pusher(env: dict[str, str], log_dir: Path) -> Iterator[Path]:
    """The pusher process; yields the file where it keeps its count of records pushed."""
    count_file = log_dir / "pushed.json"
    with (log_dir / "pusher.log").open("ab") as log:
        process = subprocess.Popen(
            [common.PYTHON, "-c", PUSHER, str(BATCHES_PER_S), str(count_file)],
            cwd=common.ROOT,
            env=env | {"DJANGO_SETTINGS_MODULE": "evdash.settings"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        common.wait_until(lambda: count_file.exists() or process.poll() is not None, 60, "the pusher's first second")
        if process.poll() is not None:
            raise RuntimeError("pusher exited: " + common.log_tail(log_dir / "pusher.log"))
        yield count_file
    finally:
        common.stop_process(process)


def pushed(count_file: Path) -> tuple[int, float]:
    data = json.loads(count_file.read_text() or "{}")
    return data["pushed"], data["t"]


def slope_per_min(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of `values` over `times_s`, per minute."""
    if len(times_s) < 2:
        return float("nan")
    return statistics.linear_regression(times_s, values).slope * 60


def measure_view(browser, url: str, view: str, plan: Plan, daphne_pid: int, count_file: Path) -> dict:
    """One view on a fresh page: warm-up dropped, then CDP metrics once a second."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    remembered = json.dumps(json.dumps({"view": view}))
    context.add_init_script(f"localStorage.setItem({json.dumps(STORAGE_KEY)}, {remembered})")
    page = context.new_page()
    try:
        page.goto(url + "/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", common.ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=60_000)
        loaded = time.monotonic()
        page.wait_for_selector(f"[data-view={view}][aria-pressed=true]")
        # The list at the top of the window: a screenful of rows or tiles, the most the page draws.
        page.evaluate(
            "v => document.querySelector(v === 'table' ? '[data-fleet-table]' : '[data-fleet-tiles]').scrollIntoView()",
            view,
        )
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        time.sleep(plan.warmup_s)
        cdp.send("HeapProfiler.collectGarbage")

        def metrics() -> dict[str, float]:
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

        heap_gc_start = metrics()["JSHeapUsedSize"] / 2**20
        gc_series = [(time.monotonic() - loaded, heap_gc_start)]
        samples = [metrics()]
        pushed_start = pushed(count_file)
        daphne_start = common.cpu_seconds(daphne_pid)
        wall_start = time.monotonic()
        deadline = wall_start + plan.seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            samples.append(metrics())
            if plan.gc_every_s and time.monotonic() - loaded - gc_series[-1][0] >= plan.gc_every_s:
                cdp.send("HeapProfiler.collectGarbage")
                gc_series.append((time.monotonic() - loaded, metrics()["JSHeapUsedSize"] / 2**20))
        daphne_cpu_s = common.cpu_seconds(daphne_pid) - daphne_start
        wall_s = time.monotonic() - wall_start
        pushed_end = pushed(count_file)
        live = page.locator("[data-live-indicator]").get_attribute("data-state") == "live"
        cdp.send("HeapProfiler.collectGarbage")
        heap_gc_end = metrics()["JSHeapUsedSize"] / 2**20
        drawn = page.evaluate("() => document.querySelectorAll('[data-charge-point]').length")
        # Every charge point was seeded without a record: "no data" or "stale" left means records lost.
        unseen = page.evaluate(
            """() => ['nodata', 'stale'].map(s => document.querySelector(`[data-summary-status=${s}] .summary-count`))
                 .reduce((sum, el) => sum + Number(el.textContent), 0)"""
        )
    finally:
        context.close()

    first, last = samples[0], samples[-1]
    elapsed = last["Timestamp"] - first["Timestamp"]

    def share(name: str) -> float:
        return 100 * (last[name] - first[name]) / elapsed

    per_second = [
        100 * (b["TaskDuration"] - a["TaskDuration"]) / (b["Timestamp"] - a["Timestamp"])
        for a, b in itertools.pairwise(samples)
        if b["Timestamp"] > a["Timestamp"]
    ]
    busy = common.percentiles(per_second, (50, 99))
    times = [s["Timestamp"] - first["Timestamp"] for s in samples]
    heap = [s["JSHeapUsedSize"] / 2**20 for s in samples]
    # After-GC heap once the chart window is full (long runs): the figure for "flat".
    full = [(t, mb) for t, mb in gc_series if t >= CHART_WINDOW_S]
    records_per_s = (pushed_end[0] - pushed_start[0]) / max(pushed_end[1] - pushed_start[1], 1e-9)
    return {
        "view": view,
        "seconds": round(elapsed, 1),
        "records_pushed_per_s": records_per_s,
        "main_thread_busy_pct": share("TaskDuration"),
        "busy_p50_pct_per_s": busy["p50"],
        "busy_p99_pct_per_s": busy["p99"],
        "script_pct": share("ScriptDuration"),
        "layout_style_pct": share("LayoutDuration") + share("RecalcStyleDuration"),
        "heap_start_mb": heap[0],
        "heap_end_mb": heap[-1],
        "heap_max_mb": max(heap),
        "heap_slope_mb_per_min": slope_per_min(times, heap),
        "heap_after_gc_start_mb": heap_gc_start,
        "heap_after_gc_end_mb": heap_gc_end,
        "heap_after_gc_slope_mb_per_min": slope_per_min(*zip(*gc_series, strict=True)) if len(gc_series) > 1 else None,
        "heap_after_gc_slope_chart_full_mb_per_min": slope_per_min(*zip(*full, strict=True)) if len(full) > 1 else None,
        "elements_drawn": drawn,
        "no_data_or_stale": unseen,
        "daphne_cpu_pct": 100 * daphne_cpu_s / wall_s,
        "live": live,
    }


def run(quick: bool, sizes: tuple[int, ...] = SIZES, views: tuple[str, ...] = VIEWS, minutes: float | None = None):
    from playwright.sync_api import sync_playwright

    plan = plan_for(quick, minutes)
    load = common.load_average()
    rows = []
    with only_run(), common.scratch_var_dir() as log_dir:
        common.ensure_postgres_database(DATABASE_URL)
        common.flush_redis(REDIS_URL)
        # No broker: nothing here reads Kafka, the pusher stands in for the consumer.
        env = common.production_env("127.0.0.1:9", database_url=DATABASE_URL, redis_url=REDIS_URL)
        common.run_manage(["migrate", "--verbosity", "0"], env)
        # Production serves collected static files (README, Production), as this layout does.
        common.run_manage(["collectstatic", "--noinput", "--verbosity", "0"], env)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                for size in sizes:
                    common.run_manage(["shell", "-c", SEED.format(count=size, password=common.ADMIN_PASSWORD)], env)
                    try:
                        with server(env, log_dir) as (daphne_pid, port), pusher(env, log_dir) as count_file:
                            url = f"http://127.0.0.1:{port}"
                            for view in views:
                                row = measure_view(browser, url, view, plan, daphne_pid, count_file)
                                rows.append({"charge_points": size, **common.rounded(row, 2)})
                    except Exception as exc:
                        logs = "\n".join(
                            f"--- {p.name} ---\n{common.log_tail(p, 800)}" for p in sorted(log_dir.glob("*.log"))
                        )
                        rows.append({"charge_points": size, "error": f"{exc}\n{logs}"[:3000]})
            finally:
                browser.close()
    for row in rows:
        row["load_1min_before"] = load[0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="Comma-separated fleet sizes.")
    parser.add_argument("--views", default=",".join(VIEWS), help="Comma-separated: table, tiles.")
    parser.add_argument("--minutes", type=float, help="Measure each view this long (heap flatness).")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    views = tuple(v for v in args.views.split(",") if v)
    common.print_rows(TITLE, run(args.quick, sizes, views, args.minutes))


if __name__ == "__main__":
    main()
