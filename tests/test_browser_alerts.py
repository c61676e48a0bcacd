"""The alert feed as a user meets it: `manage.py demo` running, an alert rule added while the fleet
page is open, an alert it raises appearing live in the feed, acknowledged from the page, and the
acknowledgement (who and when) reaching a second open page live and the /alerts/ page. The same
feed on a charge point's page: that charge point's alerts only, live, acknowledged there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.test_browser import SCREENSHOTS, demo, log_in, page  # noqa: F401 (fixtures: this module's own demo)

pytestmark = pytest.mark.browser

RULE = "Browser test: power seen"
FEED_REQUEST = "/alerts/?"


def add_rule(demo: dict, name: str = RULE) -> None:  # noqa: F811
    """Add, in the running demo's database, a rule that holds for every record with a power value.

    The alert engine loads its rules again every few seconds (gateway.alerts.engine.RULES_RELOAD_S),
    so the next records raise it (one alert per charge point: the demo's simulated chargers also
    fault now and then, so the test follows this rule's alerts, not the first one in the feed).
    """
    env = os.environ | {"EVDASH_VAR_DIR": str(Path(demo["log"]).parent)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    code = (
        "from gateway.models import AlertRule; "
        f"AlertRule.objects.create(name={name!r}, kind='threshold', severity='critical', value='power_w', "
        "comparator='>=', threshold=-1)"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], env=env, cwd=settings.BASE_DIR, check=True, timeout=60
    )


def test_an_alert_appears_live_and_is_acknowledged_from_the_fleet_page(demo: dict, page) -> None:  # noqa: F811
    feed_requests: list[str] = []
    page.on("request", lambda request: FEED_REQUEST in request.url and feed_requests.append(request.url))
    log_in(page, demo["url"])
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    page.wait_for_selector("[data-alert-feed][data-alert-count]", timeout=10_000)  # the feed has loaded
    assert page.locator(f'[data-alert-feed] li[data-rule="{RULE}"]').count() == 0

    # A second page of the same user, to see the acknowledgement arrive live.
    other = page.context.new_page()
    other.goto(demo["url"] + "/")
    other.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    other.wait_for_selector("[data-alert-feed][data-alert-count]", timeout=10_000)

    add_rule(demo)
    first = page.wait_for_selector(f'[data-alert-feed] li[data-rule="{RULE}"]', timeout=30_000)
    alert_id, charge_point = first.get_attribute("data-alert-id"), first.get_attribute("data-charge-point")
    item = f'[data-alert-feed] li[data-alert-id="{alert_id}"]'
    # It came over the socket: the feed was read once over HTTP, before the rule existed.
    assert len(feed_requests) == 1, feed_requests
    assert RULE in page.locator(item).inner_text() and charge_point in page.locator(item).inner_text()
    assert "is-active" in (page.locator(item).get_attribute("class") or "")
    assert "severity-critical" in (page.locator(item).get_attribute("class") or "")
    other.wait_for_selector(item, timeout=10_000)

    page.locator(f"{item} button[data-acknowledge]").click()
    page.wait_for_function(
        "sel => /acknowledged by admin at/.test(document.querySelector(sel).textContent)", arg=item, timeout=10_000
    )
    assert page.locator(f"{item} button[data-acknowledge]").count() == 0
    # The other page hears of it live (the acknowledgement is pushed), with who and when.
    other.wait_for_function(
        "sel => /acknowledged by admin at/.test(document.querySelector(sel)?.textContent || '')",
        arg=item,
        timeout=10_000,
    )
    acknowledged_at = other.locator(f"{item} .alert-ack time").get_attribute("datetime")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-alerts.png"))
    assert acknowledged_at and acknowledged_at.endswith("Z")

    # Stored: the alerts page lists it as acknowledged by admin, at the time the pages showed.
    stored = page.evaluate(
        "url => fetch(url, {headers: {Accept: 'application/json'}}).then(r => r.json())",
        f"{demo['url']}/alerts/?format=json&state=all&charge_point={charge_point}",
    )["alerts"]
    assert [(a["rule"], a["acknowledged_by"], a["acknowledged_at"]) for a in stored if a["id"] == alert_id] == [
        (RULE, "admin", acknowledged_at)
    ]
    page.goto(demo["url"] + f"/alerts/?state=all&charge_point={charge_point}")
    row = page.locator(f'[data-alert-table] tr[data-alert-id="{alert_id}"]')
    assert "by admin at" in row.inner_text() and RULE in row.inner_text()
    other.close()


CHARGE_POINT_RULE = "Browser test: power seen, on the charge point page"
CHARGE_POINT = "cp-01"


def test_a_charge_points_alerts_appear_live_on_its_page_and_are_acknowledged_there(demo: dict, page) -> None:  # noqa: F811
    feed_requests: list[str] = []
    page.on("request", lambda request: FEED_REQUEST in request.url and feed_requests.append(request.url))
    log_in(page, demo["url"])
    # The fleet page, in a second tab: it sees every charge point's alerts, and the acknowledgement.
    fleet = page.context.new_page()
    fleet.goto(demo["url"] + "/")
    fleet.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    fleet.wait_for_selector("[data-alert-feed][data-alert-count]", timeout=10_000)
    feed_requests.clear()
    page.goto(f"{demo['url']}/chargepoints/{CHARGE_POINT}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    page.wait_for_selector("[data-alert-feed][data-alert-count]", timeout=10_000)
    assert page.locator(f'[data-alert-feed] li[data-rule="{CHARGE_POINT_RULE}"]').count() == 0
    assert len(feed_requests) == 1 and f"charge_point={CHARGE_POINT}" in feed_requests[0], feed_requests

    # The rule holds for every charge point: each raises its own alert.
    add_rule(demo, CHARGE_POINT_RULE)
    mine = f'[data-alert-feed] li[data-rule="{CHARGE_POINT_RULE}"]'
    first = page.wait_for_selector(mine, timeout=30_000)
    alert_id = first.get_attribute("data-alert-id")
    item = f'[data-alert-feed] li[data-alert-id="{alert_id}"]'
    fleet.wait_for_selector(item, timeout=10_000)
    fleet.wait_for_selector(f'{mine}:not([data-charge-point="{CHARGE_POINT}"])', timeout=10_000)
    # It came over the socket (the feed was read once, before the rule existed); the page shows
    # this charge point's alerts only, although the others' were raised too.
    assert len(feed_requests) == 1, feed_requests
    shown = page.locator("[data-alert-feed] li").evaluate_all("items => items.map(li => li.dataset.chargePoint)")
    assert shown and set(shown) == {CHARGE_POINT}, shown
    assert page.locator(mine).count() == 1
    assert "is-active" in (page.locator(item).get_attribute("class") or "")
    assert CHARGE_POINT_RULE in page.locator(item).inner_text()

    page.locator(f"{item} button[data-acknowledge]").click()
    page.wait_for_function(
        "sel => /acknowledged by admin at/.test(document.querySelector(sel).textContent)", arg=item, timeout=10_000
    )
    acknowledged_at = page.locator(f"{item} .alert-ack time").get_attribute("datetime")
    assert acknowledged_at and acknowledged_at.endswith("Z")
    # Pushed: the fleet page hears of it live, with who and when.
    fleet.wait_for_function(
        "sel => /acknowledged by admin at/.test(document.querySelector(sel)?.textContent || '')",
        arg=item,
        timeout=10_000,
    )
    assert fleet.locator(f"{item} .alert-ack time").get_attribute("datetime") == acknowledged_at
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-charge-point-alerts.png"))

    # Stored: the page opened again reads it over HTTP, still active, acknowledged by admin then.
    page.reload()
    page.wait_for_selector(f"{item} .alert-ack time", timeout=10_000)
    assert page.locator(f"{item} .alert-ack time").get_attribute("datetime") == acknowledged_at
    assert page.locator(f"{item} button[data-acknowledge]").count() == 0
    assert "is-active" in (page.locator(item).get_attribute("class") or "")
    shown = page.locator("[data-alert-feed] li").evaluate_all("items => items.map(li => li.dataset.chargePoint)")
    assert set(shown) == {CHARGE_POINT}, shown
    fleet.close()
