"""End-to-end latency of the demo as the user sees it: poll timestamp → frame in the page → paint.

Starts `manage.py demo` on a scratch SQLite, then for each run opens a fresh Chromium page, logs
in, drops a warm-up period and records for --seconds:

- frame latency: the record's `ts` (set by the poller when it read the charger) to the moment the
  page's WebSocket received the frame, timestamped in the page with Date.now() by a listener that
  an init script installs before the page's own socket opens (not in this Python driver, whose
  CDP round trip would add its own delay);
- delay to paint: frame arrival to the tile showing that record. The fleet page buffers records and
  redraws once a second, so this is mostly the wait for the next tick: a MutationObserver sees the
  tile's <time datetime> change, and a requestAnimationFrame callback after it marks the frame the
  browser paints.

It prints each run's percentiles and the median over the runs of each percentile (at least three
runs), plus the page's JS heap at the start and end of each run (CDP Performance metrics).

    DJANGO_DEBUG=1 .venv/bin/python bench/demo_latency.py --charge-points 12 --runs 3 --seconds 30
"""

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/demo_latency.py`
    import common  # type: ignore[no-redef]

TITLE = "Demo latency in the page: poll → WebSocket frame → paint (Chromium)"
ROOT = common.ROOT
PASSWORD = common.ADMIN_PASSWORD
PERCENTILES = (50, 95, 99)

# Runs in the page before any of its scripts: wraps WebSocket so that every socket the page opens
# gets our listener first, and watches the tiles' record timestamps for the paint.
INSTRUMENT = """
(() => {
  const frames = [];   // [arrival ms, record ts ms, charge point, record ts text]
  const paints = [];   // [DOM update ms, next animation frame ms, charge point, record ts text]
  window.__bench = { frames, paints };
  const NativeWebSocket = window.WebSocket;
  class TimedWebSocket extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        const arrived = Date.now();
        let message;
        try { message = JSON.parse(event.data); } catch (err) { return; }
        if (message.type !== "telemetry") return;
        for (const r of message.records || [message.record]) {
          if (r.status !== "offline") frames.push([arrived, Date.parse(r.ts), r.charge_point, r.ts]);
        }
      });
    }
  }
  window.WebSocket = TimedWebSocket;
  document.addEventListener("DOMContentLoaded", () => {
    new MutationObserver((mutations) => {
      const updated = Date.now();
      const changed = [];
      for (const m of mutations) {
        const tile = m.target.closest && m.target.closest("[data-charge-point]");
        const ts = m.target.getAttribute("datetime");
        if (tile && ts) changed.push([tile.dataset.chargePoint, ts]);
      }
      if (changed.length === 0) return;
      requestAnimationFrame(() => {
        const frame = Date.now();
        for (const [slug, ts] of changed) paints.push([updated, frame, slug, ts]);
      });
    }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["datetime"] });
  });
})();
"""


@dataclass
class RunResult:
    frames: int
    latency_ms: dict[int, float]
    painted: int
    dom_ms: dict[int, float]
    paint_ms: dict[int, float]
    heap_mb: tuple[float, float]


def start_demo(charge_points: int, var_dir: str) -> tuple[subprocess.Popen, str]:
    port = common.free_port()
    env = common.embedded_env(Path(var_dir), DJANGO_DEBUG="1", EVDASH_ADMIN_PASSWORD=PASSWORD)
    args = [sys.executable, "manage.py", "demo", "--charge-points", str(charge_points), "--port", str(port)]
    args += ["--kafka-port", str(common.free_port()), "--mqtt-port", str(common.free_port())]
    args += ["--modbus-base-port", str(common.free_port_range(charge_points + 1))]  # + the site meter
    with Path(var_dir, "demo.log").open("w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(url + "/accounts/login/", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("demo did not start:\n" + Path(var_dir, "demo.log").read_text()[-2000:])


def percentiles(values: list[float]) -> dict[int, float]:
    """The PERCENTILES of `values` (inclusive method: needs no more than two values)."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in PERCENTILES}


def measure(browser, url: str, warmup_s: float, seconds: float) -> RunResult:
    """One run: a fresh page, logged in, warm-up dropped, frames and paints recorded in the page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(INSTRUMENT)
    page = context.new_page()
    page.goto(url + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=60_000)
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def heap_mb() -> float:
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        return metrics["JSHeapUsedSize"] / 2**20

    page.wait_for_timeout(warmup_s * 1000)
    # Page clock (ms): only frames that arrive after the warm-up count.
    start_ms = page.evaluate("() => Date.now()")
    heap_start = heap_mb()
    page.wait_for_timeout(seconds * 1000)
    end_ms = page.evaluate("() => Date.now()")
    heap_end = heap_mb()
    data = page.evaluate("() => window.__bench")
    context.close()

    frames = [f for f in data["frames"] if start_ms <= f[0] <= end_ms]
    arrival: dict[tuple[str, str], float] = {}
    for arrived, _, slug, ts in frames:
        arrival.setdefault((slug, ts), arrived)  # a record sent twice was painted after its first arrival
    dom_ms, paint_ms = [], []
    for updated, frame, slug, ts in data["paints"]:
        if (slug, ts) in arrival:
            dom_ms.append(updated - arrival[(slug, ts)])
            paint_ms.append(frame - arrival[(slug, ts)])
    if len(frames) < 2 or len(paint_ms) < 2:
        raise RuntimeError(f"too few frames ({len(frames)}) or paints ({len(paint_ms)}) to measure")
    return RunResult(
        frames=len(frames),
        latency_ms=percentiles([arrived - ts_ms for arrived, ts_ms, _, _ in frames]),
        painted=len(paint_ms),
        dom_ms=percentiles(dom_ms),
        paint_ms=percentiles(paint_ms),
        heap_mb=(heap_start, heap_end),
    )


def describe(name: str, values: dict[int, float]) -> str:
    return f"{name}: " + "  ".join(f"p{p} {values[p]:.0f}" for p in PERCENTILES)


def median_of(results: list[RunResult], field: str) -> dict[int, float]:
    return {p: statistics.median(getattr(r, field)[p] for r in results) for p in PERCENTILES}


def measure_runs(charge_points: int, runs: int, warmup_s: float, seconds: float) -> list[RunResult]:
    """One demo, `runs` fresh pages on it; prints each run as it ends."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch_chromium

    results: list[RunResult] = []
    with tempfile.TemporaryDirectory() as var_dir:
        started = time.monotonic()
        process, url = start_demo(charge_points, var_dir)
        print(f"demo serving after {time.monotonic() - started:.1f} s ({charge_points} charge points)")
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for run_number in range(1, runs + 1):
                    result = measure(browser, url, warmup_s, seconds)
                    results.append(result)
                    print(
                        f"run {run_number}: {result.frames} frames, {result.painted} painted; "
                        f"{describe('poll→frame ms', result.latency_ms)}; "
                        f"{describe('frame→DOM ms', result.dom_ms)}; "
                        f"{describe('frame→paint ms', result.paint_ms)}; "
                        f"JS heap {result.heap_mb[0]:.1f} → {result.heap_mb[1]:.1f} MB",
                        flush=True,
                    )
                browser.close()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    return results


def result_row(label: str, latency: dict, dom: dict, paint: dict, extra: dict) -> dict:
    row = {"run": label} | extra
    for name, values in (("poll_to_frame", latency), ("frame_to_dom", dom), ("frame_to_paint", paint)):
        row |= {f"{name}_p{p}_ms": float(values[p]) for p in PERCENTILES}
    return row


def rows_of(results: list[RunResult]) -> list[dict]:
    """One row per run, then the median over the runs of each percentile."""
    rows = [
        result_row(
            str(number),
            r.latency_ms,
            r.dom_ms,
            r.paint_ms,
            {
                "frames": r.frames,
                "painted": r.painted,
                "js_heap_start_mb": r.heap_mb[0],
                "js_heap_end_mb": r.heap_mb[1],
            },
        )
        for number, r in enumerate(results, 1)
    ]
    medians = [median_of(results, field) for field in ("latency_ms", "dom_ms", "paint_ms")]
    rows.append(result_row("median of runs", *medians, {}))
    return rows


def run(quick: bool) -> list[dict]:
    """12 charge points (the demo's default), three runs: 10 s warm-up + 30 s each (quick: 5 + 10 s)."""
    warmup_s, seconds = (5, 10) if quick else (10, 30)
    return rows_of(measure_runs(12, 3, warmup_s, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charge-points", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3, help="Runs (fresh page each); at least 3.")
    parser.add_argument("--warmup", type=float, default=10, help="Seconds dropped at the start of each run.")
    parser.add_argument("--seconds", type=float, default=30, help="Seconds measured per run.")
    parser.add_argument("--quick", action="store_true", default=common.quick_default(), help="run(quick=True).")
    options = parser.parse_args()
    if options.quick:
        common.print_rows(TITLE, [common.rounded(row) for row in run(quick=True)])
        return
    if options.runs < 3:
        parser.error("--runs must be at least 3: one run's percentiles are not a result")
    results = measure_runs(options.charge_points, options.runs, options.warmup, options.seconds)
    print(f"median of {len(results)} runs (warm-up {options.warmup:.0f} s dropped, {options.seconds:.0f} s each):")
    print("  " + describe("poll→frame ms", median_of(results, "latency_ms")))
    print("  " + describe("frame→DOM ms", median_of(results, "dom_ms")))
    print("  " + describe("frame→paint ms (next animation frame)", median_of(results, "paint_ms")))


if __name__ == "__main__":
    main()
