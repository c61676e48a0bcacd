"""End-to-end latency of the demo: poll timestamp (record ts) → WebSocket frame in Chromium.

Starts `manage.py demo` on a scratch SQLite, logs in with Chromium, listens to the fleet socket
for --seconds, and prints latency percentiles plus the page's JS heap (CDP Performance metrics)
at start and end, to show the charts' bounded windows keep memory flat.

    DJANGO_DEBUG=1 .venv/bin/python bench/demo_latency.py --charge-points 12 --seconds 60
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-7731"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_demo(charge_points: int, var_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"DJANGO_DEBUG": "1", "EVDASH_VAR_DIR": var_dir, "EVDASH_ADMIN_PASSWORD": PASSWORD}
    args = [sys.executable, "manage.py", "demo", "--charge-points", str(charge_points), "--port", str(port)]
    args += ["--kafka-port", str(free_port()), "--modbus-base-port", "41000"]
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/accounts/login/", timeout=1)
            return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("demo did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charge-points", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60)
    options = parser.parse_args()
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from tests.browser import launch_chromium

    with tempfile.TemporaryDirectory() as var_dir:
        started = time.monotonic()
        process, url = start_demo(options.charge_points, var_dir)
        ready_s = time.monotonic() - started
        latencies_ms: list[float] = []
        slow: list[tuple] = []
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page()

                def on_frame(payload: str | bytes) -> None:
                    received = datetime.now(UTC)
                    message = json.loads(payload)
                    if message.get("type") == "telemetry" and message["record"]["status"] != "offline":
                        ts = datetime.fromisoformat(message["record"]["ts"].replace("Z", "+00:00"))
                        latency_ms = (received - ts).total_seconds() * 1000
                        latencies_ms.append(latency_ms)
                        if latency_ms > 200:
                            slow.append(
                                (
                                    round(time.monotonic() - started, 1),
                                    round(latency_ms),
                                    message["record"]["charge_point"],
                                )
                            )

                page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
                page.goto(url + "/")
                page.fill("input[name=username]", "admin")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=60_000)
                first_record_s = None
                cdp = page.context.new_cdp_session(page)
                cdp.send("Performance.enable")

                def heap_mb() -> float:
                    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                    return metrics["JSHeapUsedSize"] / 2**20

                heap_start = heap_mb()
                end = time.monotonic() + options.seconds
                while time.monotonic() < end:
                    page.wait_for_timeout(1000)
                    if first_record_s is None and latencies_ms:
                        first_record_s = time.monotonic() - started
                heap_end = heap_mb()
                browser.close()
        finally:
            process.send_signal(2)
            process.wait(30)
    latencies_ms.sort()
    quantiles = statistics.quantiles(latencies_ms, n=100)
    frames = len(latencies_ms)
    print(f"charge points: {options.charge_points}, window: {options.seconds:.0f} s, frames: {frames}")
    print(f"demo serving after {ready_s:.1f} s; first live record in the browser after {first_record_s:.1f} s")
    print(
        f"latency poll→browser ms: p50 {quantiles[49]:.1f}  p95 {quantiles[94]:.1f}  "
        f"p99 {quantiles[98]:.1f}  max {latencies_ms[-1]:.1f}"
    )
    print(f"frames over 200 ms (s since start, ms, charge point): {slow}")
    print(f"JS heap used: {heap_start:.1f} MB at start, {heap_end:.1f} MB after {options.seconds:.0f} s")


if __name__ == "__main__":
    main()
