"""The site page in Chromium: the stacked chart drawn from the controller's statuses and updated live
when a new status arrives, the state line and the chargers' table following it, and an override
created (a refused one first, with the service's reason) and cancelled from the page.

The server is the demo's web process (daphne with the consumer on its loop, so its site-status
consumer stores each status as a SiteSample and pushes it through the channel layer to the page's
socket), on a SQLite database of its own and the session's Kafka broker. No poller runs: the test
publishes the statuses a site controller would, to evdash.site-status.
"""

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from django.conf import settings

from gateway.kafka.config import producer_options
from gateway.kafka.topics import site_status_topic
from gateway.sitecontrol.messages import ChargerShare, SiteStatus
from tests.browser import launch_chromium, serving
from tests.conftest import free_port
from tests.processes import Service, manage, process_env, wait_until
from tests.test_browser_commands import run_async

pytestmark = pytest.mark.browser

PASSWORD = "browser-site-pw-4821"
SITE = "depot"
LIMIT_A = 63.0
SCREENSHOTS = Path(os.environ.get("EVDASH_SCREENSHOT_DIR") or Path(settings.BASE_DIR) / "test-results" / "screenshots")
WAIT_MS = 20_000

SETUP = f"""
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from gateway.models import ChargePoint, DeviceProfile, Site
profile = DeviceProfile.objects.get(slug="generic-ev-charger")
site = Site.objects.create(slug="{SITE}", name="Depot", limit_a={LIMIT_A})
ChargePoint.objects.create(slug="cp-1", name="CP 1", site=site, host="127.0.0.1", port={{port}}, profile=profile,
                           priority=10)
ChargePoint.objects.create(slug="cp-2", name="CP 2", site=site, host="127.0.0.1", port={{port}} + 1, profile=profile,
                           priority=20)
operator = get_user_model().objects.create_user("operator", password="{PASSWORD}")
operator.user_permissions.add(Permission.objects.get(codename="override_allocation"))
"""
SERVE = "from gateway.demo import serve_web_with_consumer; serve_web_with_consumer('127.0.0.1', {port})"


def site_status(at: datetime, cp1_a: float, cp2_a: float, base_a: float = 20.0, **extra: object) -> SiteStatus:
    """A period of the depot as a site controller publishes it: two three-phase chargers and a building."""
    chargers = (
        ChargerShare("cp-1", cp1_a, (cp1_a, cp1_a, cp1_a), "charging", "fair share", priority=10),
        ChargerShare("cp-2", cp2_a, (cp2_a, cp2_a, cp2_a), "charging", "fair share", priority=20),
    )
    draw = base_a + cp1_a + cp2_a
    fields = {
        "site": SITE,
        "at": at,
        "poller": "poller-1",
        "state": "controlling",
        "limit_a": LIMIT_A,
        "draw_a": (draw, draw - 1, draw - 2),
        "draw_source": "meter",
        "meter_age_s": 0.3,
        "base_load_a": (base_a, base_a - 1, base_a - 2),
        "allocated_a": (cp1_a + cp2_a,) * 3,
        "chargers": chargers,
        "margin_a": 1.0,
    } | extra
    return SiteStatus(**fields)


def publish(*statuses: SiteStatus) -> None:
    """Publish statuses to evdash.site-status, keyed by site, as the poller's outbox does."""

    async def send() -> None:
        producer = AIOKafkaProducer(**producer_options())
        await producer.start()
        try:
            for status in statuses:
                await producer.send_and_wait(site_status_topic(), status.to_json(), key=status.key)
        finally:
            await producer.stop()

    run_async(send)


@pytest.fixture
def server(kafka: dict, tmp_path: Path) -> Iterator[dict]:
    env = process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_COMMANDS_TOPIC=kafka["COMMANDS_TOPIC"],
        EVDASH_COMMAND_RESULTS_TOPIC=kafka["COMMAND_RESULTS_TOPIC"],
        EVDASH_ALERTS_TOPIC=kafka["ALERTS_TOPIC"],
        EVDASH_SITE_STATUS_TOPIC=kafka["SITE_STATUS_TOPIC"],
        EVDASH_CONSUMER_GROUP=kafka["CONSUMER_GROUP"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
    )
    env.pop("REDIS_URL", None)  # the in-memory channel layer: the consumer pushes in the web process
    manage(["migrate", "-v", "0"], env)
    manage(["shell", "-c", SETUP.format(port=free_port())], env)
    port = free_port()
    web = Service("shell", env, tmp_path / "web.log", "-c", SERVE.format(port=port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: serving(url), 60, "the web server", web)
        yield {"url": url, "web": web}
        web.stop(signal.SIGINT)
    finally:
        web.kill()


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def chart(page) -> dict:
    """What Plotly drew: each trace's name, its stack group, dash and its last y; the points shown."""
    return page.evaluate(
        """() => { const el = document.getElementById('site-chart');
            return { points: Number(el.dataset.points || 0), newest: el.dataset.newest,
                     traces: el.data.map(t => ({ name: t.name, stack: t.stackgroup || null,
                                                 dash: t.line.dash || null, colour: t.line.color,
                                                 last: t.y.length ? t.y[t.y.length - 1] : null })),
                     stackedTop: (el.calcdata || []).map(c => c.length ? c[c.length - 1].y : null) }; }"""
    )


def wait_for_text(page, selector: str, text: str, server: dict) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([sel, text]) => (document.querySelector(sel)?.textContent || '').includes(text)",
            arg=[selector, text],
            timeout=WAIT_MS,
        )
    except PlaywrightTimeout:
        shown = page.eval_on_selector(selector, "el => el.textContent")
        raise AssertionError(
            f"{selector}: {shown!r}, not {text!r}; server:\n{server['web'].output()[-3000:]}"
        ) from None


def test_the_site_chart_draws_and_follows_the_controller_and_an_override_is_made_from_the_page(
    server: dict, browser
) -> None:
    now = datetime.now(UTC)
    publish(*(site_status(now - timedelta(seconds=s), 16.0, 12.0) for s in (20, 15, 10)))

    context = browser.new_context(viewport={"width": 1280, "height": 1300})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.goto(f"{server['url']}/sites/{SITE}/")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server['url']}/sites/{SITE}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=WAIT_MS)
    page.evaluate("window.notReloaded = true")
    page.wait_for_function("() => Number(document.getElementById('site-chart').dataset.points) === 3", timeout=WAIT_MS)

    drawn = chart(page)
    names = [trace["name"] for trace in drawn["traces"]]
    assert names == ["CP 1 actual", "CP 2 actual", "CP 1 allocated", "CP 2 allocated", "Limit", "Total draw"]
    by_name = {trace["name"]: trace for trace in drawn["traces"]}
    assert by_name["CP 1 actual"]["stack"] == by_name["CP 2 actual"]["stack"] == "actual"
    assert by_name["CP 1 allocated"]["dash"] == "dash" and by_name["CP 1 allocated"]["stack"] == "allocated"
    assert by_name["Limit"]["last"] == LIMIT_A and by_name["Limit"]["colour"] == "#dc2626"
    # 20 A building + 16 + 12 on the most loaded phase.
    assert by_name["Total draw"]["last"] == 48.0 and by_name["Total draw"]["colour"] == "#111827"
    # Stacked: the second charger's area tops out at the sum of both.
    assert drawn["stackedTop"][1] == 28.0
    wait_for_text(page, "[data-site-state-text]", "controlling", server)
    wait_for_text(page, "[data-site-headroom]", "15.0 A", server)

    # A new period, pushed through the server's consumer and channel layer: the chart and the page follow.
    pushed = site_status(
        datetime.now(UTC),
        24.0,
        6.0,
        base_a=30.0,
        state="fallback",
        reason="meter stale for 12 s",
        draw_source="fallback",
    )
    publish(pushed)
    newest = pushed.to_dict()["at"]
    page.wait_for_function(
        "at => document.getElementById('site-chart').dataset.newest === at", arg=newest, timeout=WAIT_MS
    )
    drawn = chart(page)
    assert drawn["points"] == 4
    assert {t["name"]: t["last"] for t in drawn["traces"]}["Total draw"] == 60.0
    assert drawn["stackedTop"][1] == 30.0
    wait_for_text(page, "[data-site-state-text]", "fallback: failsafe shares: meter stale for 12 s", server)
    wait_for_text(page, "[data-site-headroom]", "3.0 A", server)
    wait_for_text(page, 'tr[data-charger="cp-1"] [data-cell="actual"]', "24 / 24 / 24 A", server)

    # An override from the page: the service's refusal first, then one it takes.
    page.select_option("[data-override-charger]", "cp-2")
    page.fill("[data-override-current]", "4")
    page.click("[data-override-submit]")
    wait_for_text(
        page,
        "[data-override-status]",
        "Override refused — 4 A is not allowed for cp-2: 0 A (pause) or 6 to 32 A",
        server,
    )
    assert page.get_attribute("[data-override-current]", "aria-invalid") == "true"
    page.fill("[data-override-current]", "10")
    page.select_option("[data-override-duration]", "30")
    page.fill("input[name=reason]", "van 7 leaves at noon")
    page.click("[data-override-submit]")
    wait_for_text(page, "[data-override-status]", "Override stored: 10 A for cp-2 until", server)
    item = page.locator('[data-override-list] li[data-charge-point="cp-2"]')
    assert "10 A for cp-2" in item.inner_text() and "by operator — van 7 leaves at noon" in item.inner_text()
    assert page.evaluate("window.notReloaded") is True
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-site.png"), full_page=True)

    # Stored: a fresh page lists it from the database, and cancels it.
    page.reload()
    page.wait_for_selector('[data-override-list] li[data-charge-point="cp-2"]', timeout=WAIT_MS)
    page.click('[data-override-list] li[data-charge-point="cp-2"] [data-override-cancel]')
    wait_for_text(page, "[data-override-status]", "Override of cp-2 cancelled", server)
    assert page.locator("[data-override-list] li").count() == 0
    page.reload()
    assert page.locator("[data-override-list] li").count() == 0
    # The refused override is a 400 the browser logs; nothing else (no script error, no CSP refusal).
    assert [e for e in errors if "status of 400" not in e] == [] and len(errors) == 1, errors
    context.close()
