"""The product as a user meets it: `manage.py demo` running, Chromium logging in and watching it live."""

import contextlib
import http.server
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.browser import launch_chromium
from tests.conftest import free_port
from tests.ports import free_port_run

pytestmark = pytest.mark.browser

PASSWORD = "browser-test-pw-4821"
LIVE_CHARGE_POINTS = 4
# Tests never write tracked files: screenshots go to an ignored folder; `make screenshots` points
# this at docs/ to refresh the README's pictures.
SCREENSHOTS = Path(os.environ.get("EVDASH_SCREENSHOT_DIR") or Path(settings.BASE_DIR) / "test-results" / "screenshots")
# The demo fleet cycles through the shipped profiles (gateway.demo.DEMO_PROFILES): cp-02 is an ABB
# Terra AC, whose current limit a Modbus client can set.
ABB_SLUG, ABB_INDEX, ABB_UNIT_ID = "cp-02", 1, 1
# ABB "Terra AC wallbox - TAC Modbus Communication" rev 1.11, register table: 4100h "Set charging
# current limit", FC16, two registers, the limit in mA as an unsigned 32-bit big-endian integer
# (so 11 A is 11000 = words 0x0000, 0x2AF8). Derived by hand from the vendor document, not our codec.
ABB_SET_CURRENT_LIMIT = 0x4100


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


def wait_until_serving(url: str, process: subprocess.Popen, log_path: Path, what: str) -> None:
    """Wait until `url` serves its login page; fail with the log's tail if `process` ends or 60 s pass."""
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/accounts/login/", timeout=1)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not serve: " + log_path.read_text()[-3000:]) from None
            time.sleep(0.2)


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
    # The charge points' ports and the site meter's after them, below the ephemeral range.
    modbus_base_port = free_port_run(LIVE_CHARGE_POINTS + 1)
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
            "--mqtt-port",
            str(free_port()),
            "--modbus-base-port",
            str(modbus_base_port),
            "--speedup",
            "30",
            # The speed-up already compresses the day: real-life sessions and faults at 30x, not the
            # demo's 0.01 on top (a fault a charger every 7 s would make every page an alert feed).
            "--session-scale",
            "1",
            "--seed",
            "7",
        ],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{http_port}"
    wait_until_serving(url, process, var_dir / "demo.log", "demo")
    try:
        yield {
            "url": url,
            "process": process,
            "log": var_dir / "demo.log",
            "modbus_base_port": modbus_base_port,
            "database": var_dir / "db.sqlite3",
        }
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


def set_abb_current_limit(demo: dict, limit_a: int) -> None:
    """Pin the simulated ABB's current limit as an energy manager would: a Modbus write to the charger."""
    from pymodbus.client import ModbusTcpClient

    milliamps = limit_a * 1000
    client = ModbusTcpClient("127.0.0.1", port=demo["modbus_base_port"] + ABB_INDEX, timeout=3, retries=1)
    try:
        assert client.connect(), "cannot reach the simulated ABB"
        response = client.write_registers(ABB_SET_CURRENT_LIMIT, [milliamps >> 16, milliamps & 0xFFFF], device_id=1)
        assert not response.isError(), response
    finally:
        client.close()


@contextlib.contextmanager
def other_site() -> Iterator[str]:
    """A real web server on another port of 127.0.0.1 serving an empty page: another origin, same host.

    A real one, not a Playwright route: Chromium treats a routed page as public and its Local
    Network Access check would block the socket before our origin check is reached.
    """

    class EmptyPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>another site</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EmptyPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def record_time_ms(page, selector: str) -> float:
    """The timestamp of the record shown by `selector` (a <time datetime>), in ms since the epoch."""
    return page.evaluate("s => Date.parse(document.querySelector(s).getAttribute('datetime'))", selector)


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
    # Live means new records: every live tile's record timestamp moves past the one it showed first
    # (not the chart, which the page extends every second whether records come or not).
    tile_times = """() => Object.fromEntries([...document.querySelectorAll('a.tile[data-charge-point^="cp-"]')]
        .map(t => [t.dataset.chargePoint, Date.parse(t.querySelector('time.tile-age').getAttribute('datetime'))]))"""
    first = page.evaluate(tile_times)
    assert sorted(first) == [f"cp-{i:02d}" for i in range(1, LIVE_CHARGE_POINTS + 1)]
    assert all(isinstance(ms, int | float) for ms in first.values()), first  # Date.parse gave a time, not NaN
    page.wait_for_function(
        f"first => Object.entries(({tile_times})()).every(([slug, ms]) => ms > first[slug])",
        arg=first,
        timeout=20_000,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-fleet.png"))
    # A pinned value reaches the fleet: a limit below 6 A pauses the ABB (IEC 61851), so its tile
    # shows exactly 0.0 kW in a record newer than the write.
    written_ms = time.time() * 1000
    set_abb_current_limit(demo, 0)
    abb = f'a.tile[data-charge-point="{ABB_SLUG}"]'
    page.wait_for_function(
        """([sel, after]) => { const t = document.querySelector(sel);
              return Date.parse(t.querySelector('time').getAttribute('datetime')) > after
                  && t.querySelector('.tile-power').textContent.trim() === '0.0 kW'; }""",
        arg=[abb, written_ms],
        timeout=20_000,
    )
    set_abb_current_limit(demo, 32)  # back to the rated current, for the other tests


@contextlib.contextmanager
def outside_load_management(demo: dict, slug: str) -> Iterator[None]:
    """The charge point on the demo's "depot" site (no connection limit) meanwhile: the demo site's
    controller would write its share over a limit pinned by hand (and should)."""

    def move(site: str) -> None:
        with sqlite3.connect(demo["database"]) as db:
            db.execute(
                "UPDATE gateway_chargepoint SET site_id = (SELECT id FROM gateway_site WHERE slug = ?) WHERE slug = ?",
                (site, slug),
            )

    def still_controlled() -> bool:
        with sqlite3.connect(demo["database"]) as db:
            row = db.execute(
                "SELECT status FROM gateway_sitesample WHERE site_slug = 'demo-site' ORDER BY at DESC LIMIT 1"
            ).fetchone()
        return row is not None and f'"{slug}"' in row[0]

    move("depot")
    try:
        # The poller reloads every 5 s; the controller's next status leaves the charger out.
        deadline = time.monotonic() + 30
        while still_controlled():
            assert time.monotonic() < deadline, f"{slug} still load-managed 30 s after leaving the site"
            time.sleep(0.5)
        yield
    finally:
        move("demo-site")


def test_charge_point_page_shows_the_limit_pinned_in_the_charger(demo: dict, page) -> None:
    with outside_load_management(demo, ABB_SLUG):
        limit_shown_as_pinned(demo, page)


def limit_shown_as_pinned(demo: dict, page) -> None:
    log_in(page, demo["url"])
    page.goto(f"{demo['url']}/chargepoints/{ABB_SLUG}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    limit = '[data-value="current_limit_a"]'
    for limit_a in (11, 7):
        set_abb_current_limit(demo, limit_a)
        # Exactly the value written to the charger, read back by the poller, through Kafka and the socket.
        page.wait_for_function(
            "([sel, text]) => document.querySelector(sel).textContent.trim() === text",
            arg=[limit, str(limit_a)],
            timeout=20_000,
        )
        # And the record timestamp shown keeps advancing: the page follows new records, not a cache.
        shown_ms = record_time_ms(page, "time.cp-age-text")
        page.wait_for_function(
            "([ms]) => Date.parse(document.querySelector('time.cp-age-text').getAttribute('datetime')) > ms",
            arg=[shown_ms],
            timeout=20_000,
        )
        assert page.locator(limit).text_content().strip() == str(limit_a)
    set_abb_current_limit(demo, 32)


def test_charge_point_page_draws_live_charts(demo: dict, page) -> None:
    log_in(page, demo["url"])
    page.wait_for_selector('a.tile[data-status="charging"]', timeout=60_000)
    slug = page.locator('a.tile[data-status="charging"]').first.get_attribute("data-charge-point")
    page.goto(f"{demo['url']}/chargepoints/{slug}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    # The charge point's charts plot one point per record (by the record's time).
    # Functions, not expression strings: the page's Content-Security-Policy forbids eval.
    # A record every second or two: 45 s leaves room for a loaded CI machine (4 workers on 2 cores).
    page.wait_for_function("() => document.getElementById('power-chart').data[0].x.length >= 5", timeout=45_000)
    currents = page.evaluate("() => document.getElementById('current-chart').data.map(t => t.y.length)")
    assert len(currents) == 3 and min(currents) >= 5
    assert re.search(r"\d", page.locator('[data-value="power_w"]').text_content())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-charge-point.png"))


# Opens a socket from the page and reports what happened: the first message's type, or the close code.
OPEN_SOCKET = """url => new Promise(resolve => {
    const ws = new WebSocket(url);
    ws.onmessage = e => { resolve({message: JSON.parse(e.data).type}); ws.close(); };
    ws.onclose = e => resolve({closed: e.code});
})"""


def test_websocket_needs_a_login_and_this_sites_origin(demo: dict, page) -> None:
    ws_url = demo["url"].replace("http", "ws", 1) + "/ws/fleet/"
    # Positive control: a logged-in page on the site opens the socket and gets the snapshot.
    log_in(page, demo["url"])
    assert page.evaluate(OPEN_SOCKET, ws_url) == {"message": "snapshot"}

    # Anonymous: accepted, then closed with the application's "login required" code, which the page reads.
    anonymous = page.context.browser.new_context()
    anonymous_page = anonymous.new_page()
    anonymous_page.goto(demo["url"] + "/accounts/login/")
    assert anonymous_page.evaluate(OPEN_SOCKET, ws_url) == {"closed": 4401}
    anonymous.close()

    # Another port of the same host: the browser sends the session cookie (cookies ignore ports), so
    # only the origin check stands between that page and the stream. The handshake is refused (HTTP
    # 403), which a browser reports as 1006.
    with other_site() as other_url:
        page.goto(other_url)
        assert page.evaluate(OPEN_SOCKET, ws_url) == {"closed": 1006}

    # An unknown path is refused at the handshake without a traceback in the server's log.
    page.goto(demo["url"] + "/")
    assert page.evaluate(OPEN_SOCKET, demo["url"].replace("http", "ws", 1) + "/ws/nope/") == {"closed": 1006}
    log = demo["log"].read_text()
    assert "Traceback" not in log and "No route found" not in log, log[-3000:]


def test_logging_out_closes_the_open_dashboards_socket(demo: dict, page) -> None:
    log_in(page, demo["url"])
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    other_tab = page.context.new_page()
    other_tab.goto(demo["url"] + "/")
    other_tab.click(".logout button[type=submit]")
    other_tab.wait_for_url("**/accounts/login/**")
    # The first tab's socket is closed by the server with "login required", and the page says so.
    page.wait_for_selector("[data-live-indicator][data-state=signed-out][data-close-code='4401']", timeout=10_000)
    assert "signed out" in page.locator("[data-live-indicator]").text_content()


# --- The fleet page at thousands of charge points --------------------------------------------
# daphne serving the product on its own SQLite, with FLEET_SIZE charge points and their latest
# records stored: the page gets them as the server renders it and over the real socket (snapshot).

FLEET_SIZE = 2000
FAULTED_EVERY = 50  # one charge point in 50 is faulted, the next one offline
SEED_FLEET = f"""
from datetime import UTC, datetime
from gateway.models import ChargePoint, DeviceProfile, LatestTelemetry, Site
from gateway.profiles.decode import TelemetryFields
from gateway.telemetry import build_record, parse_ts

profile = DeviceProfile.objects.get(slug="generic-ev-charger")
sites = [Site.objects.create(slug=slug, name=slug.title()) for slug in ("north", "south")]
now = datetime.now(UTC)
# Polled hourly: the records stay fresh (not stale) for the whole test.
cps = ChargePoint.objects.bulk_create(
    ChargePoint(slug=f"cp-{{i:04d}}", name=f"Bay {{i:04d}}", site=sites[i % 2], profile=profile,
                host="127.0.0.1", port=10000 + i, unit_id=1, poll_interval_ms=3_600_000)
    for i in range({FLEET_SIZE})
)
rows = []
for i, cp in enumerate(cps):
    if i % {FAULTED_EVERY} == 1:
        fields = None  # offline: nothing could be read
    else:
        status = "faulted" if i % {FAULTED_EVERY} == 0 else ("charging" if i % 3 else "available")
        power_w = float((i * 37) % 22000) if status == "charging" else 0.0
        fields = TelemetryFields(status, "C", {{"power_w": power_w, "session_energy_wh": 1000.0}}, extra={{}})
    record = build_record(charge_point=cp.slug, site=cp.site.slug, profile=profile.slug, seq=1, fields=fields,
                          moment=now)
    rows.append(LatestTelemetry(charge_point=cp, record=record, source_ts=parse_ts(record["ts"])))
LatestTelemetry.objects.bulk_create(rows)
"""
# Charging charge points have power (i * 37) % 22000 W: the highest in the fleet, as the page shows it.
MAX_POWER_KW = round(max((i * 37) % 22000 for i in range(FLEET_SIZE) if i % FAULTED_EVERY > 1 and i % 3) / 1000, 1)


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """daphne on a scratch SQLite holding FLEET_SIZE charge points: its base URL."""
    var_dir = tmp_path_factory.mktemp("fleet-var")
    env = os.environ | {"DJANGO_DEBUG": "1", "EVDASH_VAR_DIR": str(var_dir), "EVDASH_ADMIN_PASSWORD": PASSWORD}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    manage(["migrate", "--verbosity", "0"], env)
    manage(["shell", "-c", SEED_FLEET], env)
    manage(["shell", "-c", f"from gateway.demo import ensure_admin; ensure_admin({PASSWORD!r})"], env)
    port = free_port()
    log = (var_dir / "daphne.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "evdash.asgi:application"],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, var_dir / "daphne.log", "daphne")
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()


@pytest.fixture
def fleet_page(big_fleet: str) -> Iterator:
    """A fresh browser (nothing remembered) logged in on the big fleet's page, its socket live."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        log_in(page, big_fleet)
        page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=30_000)
        yield page
        browser.close()
    assert errors == []


# The charge points drawn in the current view, in screen order (top to bottom, left to right).
DRAWN = """sel => [...document.querySelectorAll(sel)]
    .map(el => ({slug: el.dataset.chargePoint, status: el.dataset.status, y: el.getBoundingClientRect().top,
                 x: el.getBoundingClientRect().left,
                 power: parseFloat(el.querySelector('.cell-power, .tile-power').textContent)}))
    .sort((a, b) => a.y - b.y || a.x - b.x)"""
ROWS = "a.fleet-row[data-charge-point]"
TILES = "a.tile[data-charge-point]"


def drawn(page, selector: str = ROWS) -> list[dict]:
    return page.evaluate(DRAWN, selector)


def show_table(page) -> None:
    page.click("[data-view=table]")
    page.wait_for_selector(ROWS)


def shown_text(page) -> str:
    return page.locator("[data-fleet-shown]").text_content().strip()


def test_big_fleet_table_draws_only_the_visible_rows_faulted_and_offline_first(fleet_page) -> None:
    page = fleet_page
    # Tiles by default: a screenful of them, not FLEET_SIZE.
    page.wait_for_selector(TILES)
    assert 4 < len(drawn(page, TILES)) < 100
    show_table(page)
    assert page.locator(TILES).count() == 0  # the hidden view keeps no elements
    assert shown_text(page) == f"{FLEET_SIZE} charge points"
    rows = drawn(page)
    assert 5 < len(rows) < 60, len(rows)
    # Faulted first, then offline (A to Z within each): 40 of each in this fleet.
    assert [row["status"] for row in rows[:5]] == ["faulted"] * 5
    assert rows[0]["slug"] == "cp-0000" and rows[1]["slug"] == f"cp-{FAULTED_EVERY:04d}"
    # Scrolled to the bottom, the last rows are drawn and the first ones are gone: still a screenful.
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("sel => !document.querySelector(sel + '[data-charge-point=\"cp-0000\"]')", arg=ROWS)
    rows = drawn(page)
    assert 5 < len(rows) < 60, len(rows)
    assert all(row["status"] in ("charging", "available") for row in rows)
    # Offline ones come right after the faulted ones: among Bay 0000 to 0099, two of each.
    page.evaluate("window.scrollTo(0, 0)")
    page.fill("[data-fleet-search]", "bay 00")
    page.wait_for_function(
        f"() => document.querySelector('[data-fleet-shown]').textContent === '100 of {FLEET_SIZE} shown'"
    )
    assert [row["slug"] for row in drawn(page)[:5]] == ["cp-0000", "cp-0050", "cp-0001", "cp-0051", "cp-0002"]
    assert [row["status"] for row in drawn(page)[:4]] == ["faulted", "faulted", "offline", "offline"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-fleet-table.png"))


def test_big_fleet_sorts_by_power_and_filters_by_status_and_search(fleet_page) -> None:
    page = fleet_page
    show_table(page)
    page.click("[data-sort=power]")
    page.wait_for_function(
        "sel => document.querySelector('[data-sort-column=power]').ariaSort === 'descending'", arg=ROWS
    )
    page.wait_for_function(
        f"sel => parseFloat(document.querySelector(sel + ' .cell-power').textContent) === {MAX_POWER_KW}", arg=ROWS
    )
    powers = [row["power"] for row in drawn(page)]
    assert powers == sorted(powers, reverse=True) and powers[0] == MAX_POWER_KW
    # Clicking again reverses the order: unknown power (the offline ones) first, then 0 kW.
    page.click("[data-sort=power]")
    page.wait_for_function("() => document.querySelector('[data-sort-column=power]').ariaSort === 'ascending'")
    page.wait_for_function("sel => document.querySelector(sel + ' .cell-power').textContent === '— kW'", arg=ROWS)
    assert {row["status"] for row in drawn(page)} == {"offline"}

    # The Faulted card filters the list to the faulted charge points, and says how many.
    faulted = FLEET_SIZE // FAULTED_EVERY
    page.click("[data-summary-status=faulted]")
    page.wait_for_function(
        f"() => document.querySelector('[data-fleet-shown]').textContent === '{faulted} of {FLEET_SIZE} shown'"
    )
    assert page.locator("[data-summary-status=faulted]").get_attribute("aria-pressed") == "true"
    assert {row["status"] for row in drawn(page)} == {"faulted"}
    # Clicked again, the filter is off.
    page.click("[data-summary-status=faulted]")
    page.wait_for_function(
        f"() => document.querySelector('[data-fleet-shown]').textContent === '{FLEET_SIZE} charge points'"
    )

    # Search narrows by name or slug.
    page.fill("[data-fleet-search]", "bay 199")
    page.wait_for_function(
        f"() => document.querySelector('[data-fleet-shown]').textContent === '10 of {FLEET_SIZE} shown'"
    )
    page.evaluate("document.querySelector('[data-fleet-table]').scrollIntoView()")  # all ten on screen
    page.wait_for_function("sel => document.querySelectorAll(sel).length === 10", arg=ROWS)
    assert sorted(row["slug"] for row in drawn(page)) == [f"cp-{i}" for i in range(1990, 2000)]
    page.fill("[data-fleet-search]", "CP-0042")
    page.wait_for_function(
        f"() => document.querySelector('[data-fleet-shown]').textContent === '1 of {FLEET_SIZE} shown'"
    )
    assert [row["slug"] for row in drawn(page)] == ["cp-0042"]
    page.fill("[data-fleet-search]", "no such charge point")
    page.wait_for_selector("[data-fleet-none]:not([hidden])")
    assert drawn(page) == []


def test_big_fleet_remembers_the_view_sort_and_filters(fleet_page) -> None:
    page = fleet_page
    show_table(page)
    page.click("[data-sort=power]")
    page.fill("[data-fleet-search]", "bay 1")
    page.wait_for_function("() => document.querySelector('[data-fleet-shown]').textContent.includes(' of ')")
    page.reload()
    page.wait_for_selector(ROWS)
    assert page.locator("[data-view=table]").get_attribute("aria-pressed") == "true"
    assert page.locator("[data-fleet-tiles]").is_hidden()
    assert page.locator("[data-sort-column=power]").get_attribute("aria-sort") == "descending"
    assert page.locator("[data-fleet-search]").input_value() == "bay 1"
    powers = [row["power"] for row in drawn(page)]
    assert powers == sorted(powers, reverse=True)
    # Back to tiles, and that too is remembered.
    page.click("[data-fleet-clear]")
    page.click("[data-view=tiles]")
    page.wait_for_selector(TILES)
    page.reload()
    page.wait_for_selector(TILES)
    assert page.locator("[data-fleet-table]").is_hidden()
    assert page.locator("[data-fleet-search]").input_value() == ""
