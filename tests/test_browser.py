"""The product as a user meets it: `manage.py demo` running, Chromium logging in and watching it live."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.browser import launch_chromium
from tests.conftest import free_port

pytestmark = pytest.mark.browser

PASSWORD = "browser-test-pw-4821"
LIVE_CHARGE_POINTS = 4
DOCS = Path(settings.BASE_DIR) / "docs"


def free_port_range(count: int) -> int:
    """A base port with `count` consecutive free ports above it."""
    for _ in range(50):
        base = free_port()
        if base + count < 65535 and all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        env=env,
        cwd=settings.BASE_DIR,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`manage.py demo` on its own SQLite, with one extra charge point that nothing answers."""
    var_dir = tmp_path_factory.mktemp("demo-var")
    http_port, dead_port = free_port(), free_port()
    env = os.environ | {
        "DJANGO_DEBUG": "1",
        "EVDASH_VAR_DIR": str(var_dir),
        "EVDASH_ADMIN_PASSWORD": PASSWORD,
        "EVDASH_RELOAD_INTERVAL_S": "1",
        "EVDASH_RECONNECT_BACKOFF_MAX_S": "3",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    manage(["migrate", "--verbosity", "0"], env)
    manage(
        [
            "shell",
            "-c",
            "from gateway.models import *; s = Site.objects.create(slug='depot', name='Depot'); "
            "ChargePoint.objects.create(slug='dead-cp', name='Dead CP', site=s, host='127.0.0.1', "
            f"port={dead_port}, profile=DeviceProfile.objects.get(slug='generic-ev-charger'))",
        ],
        env,
    )
    log = (var_dir / "demo.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "demo",
            "--charge-points",
            str(LIVE_CHARGE_POINTS),
            "--port",
            str(http_port),
            "--kafka-port",
            str(free_port()),
            "--modbus-base-port",
            str(free_port_range(LIVE_CHARGE_POINTS)),
            "--speedup",
            "30",
            "--seed",
            "7",
        ],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/accounts/login/", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("demo did not serve: " + (var_dir / "demo.log").read_text()[-3000:]) from None
            time.sleep(0.2)
    try:
        yield {"url": url, "process": process, "log": var_dir / "demo.log"}
    finally:
        process.send_signal(2)  # Ctrl-C
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    assert process.returncode == 0, (var_dir / "demo.log").read_text()[-3000:]
    assert "Stopped." in (var_dir / "demo.log").read_text()


@pytest.fixture
def page(demo: dict) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
    assert errors == []


def log_in(page, url: str) -> None:
    page.goto(url + "/")
    assert "/accounts/login/" in page.url  # the dashboard needs a login
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")


def test_fleet_goes_live_and_a_dead_charge_point_shows_offline(demo: dict, page) -> None:
    log_in(page, demo["url"])
    tiles = page.locator("a.tile[data-charge-point]")
    assert tiles.count() == LIVE_CHARGE_POINTS + 1
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    page.wait_for_selector('a.tile[data-charge-point="dead-cp"][data-status="offline"]', timeout=30_000)
    # Every simulated charge point reports a real status while the dead one stays offline.
    page.wait_for_function(
        """n => [...document.querySelectorAll('a.tile[data-charge-point^="cp-"]')]
              .filter(t => !['offline', 'nodata'].includes(t.dataset.status)).length === n""",
        arg=LIVE_CHARGE_POINTS,
        timeout=30_000,
    )
    # The fleet chart moves: new points arrive every second.
    points = "document.getElementById('fleet-power-chart').data[0].x.length"
    before = page.evaluate(points)
    page.wait_for_function(f"{points} >= {before} + 3", timeout=15_000)
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "dashboard-fleet.png"))


def test_charge_point_page_shows_live_values(demo: dict, page) -> None:
    log_in(page, demo["url"])
    page.wait_for_selector('a.tile[data-status="charging"]', timeout=60_000)
    slug = page.locator('a.tile[data-status="charging"]').first.get_attribute("data-charge-point")
    page.goto(f"{demo['url']}/chargepoints/{slug}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    # Whatever the charger model, a charging charge point's numbers move within seconds at 30× speed.
    read_values = "[...document.querySelectorAll('[data-value]')].map(el => el.textContent.trim()).join('|')"
    page.wait_for_function(f"{read_values}.match(/\\d/) !== null", timeout=15_000)
    first = page.evaluate(read_values)
    page.wait_for_function(f"{read_values} !== {json.dumps(first)}", timeout=20_000)
    assert re.search(r"\d", page.evaluate(read_values))
    page.wait_for_function("document.getElementById('power-chart').data[0].x.length >= 5", timeout=15_000)
    currents = page.evaluate("document.getElementById('current-chart').data.map(t => t.y.length)")
    assert len(currents) == 3 and min(currents) >= 5
    page.screenshot(path=str(DOCS / "dashboard-charge-point.png"))


def test_anonymous_websocket_is_refused_by_the_server(demo: dict, page) -> None:
    page.goto(demo["url"] + "/accounts/login/")
    outcome = page.evaluate(
        """url => new Promise(resolve => {
            const ws = new WebSocket(url);
            ws.onopen = () => resolve('open');
            ws.onclose = e => resolve('closed');
        })""",
        demo["url"].replace("http", "ws") + "/ws/fleet/",
    )
    assert outcome == "closed"
