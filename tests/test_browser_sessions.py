"""The sessions page in Chromium: filters, totals, the daily energy bar chart and a session's power curve."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from gateway.history.store import save_history
from gateway.models import ChargingSession, Site
from gateway.telemetry import build_record
from tests.browser import launch_chromium
from tests.conftest import make_charge_point

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-sessions-pw-5512"
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def add_session(cp_slug: str, site_slug: str, start: datetime, minutes: float, energy_wh: float) -> ChargingSession:
    end = start + timedelta(minutes=minutes)
    return ChargingSession.objects.create(
        charge_point_slug=cp_slug,
        site_slug=site_slug,
        started_at=start,
        ended_at=end,
        end_reason="finished",
        energy_wh=energy_wh,
        peak_power_w=11000.0,
        last_ts=end,
        last_seq=0,
        last_online_at=end,
    )


@pytest.fixture
def sessions(site, generic_profile) -> list[ChargingSession]:
    """Two sites; sessions yesterday and today (the history of today's first one stored)."""
    get_user_model().objects.create_user("operator", password=PASSWORD)
    harbour = Site.objects.create(slug="harbour", name="Harbour")
    make_charge_point(site, generic_profile, "cp-a", 1701)
    make_charge_point(harbour, generic_profile, "cp-b", 1702)
    yesterday = TODAY - timedelta(days=1)
    start = TODAY + timedelta(minutes=1)
    save_history(
        [
            build_record(
                charge_point="cp-a",
                site=site.slug,
                profile="p",
                seq=i,
                fields=None,
                moment=start + timedelta(seconds=i),
            )
            | {"status": "charging", "values": {"power_w": 7000.0 + 100 * i}}
            for i in range(60)
        ]
    )
    return [
        add_session("cp-a", site.slug, start, 1, 120.0),
        add_session("cp-b", "harbour", start + timedelta(seconds=5), 30, 4500.0),
        add_session("cp-a", site.slug, yesterday + timedelta(hours=9), 60, 10000.0),
        add_session("cp-b", "harbour", yesterday + timedelta(hours=10), 45, 6250.0),
    ]


@pytest.fixture
def page(live_server, sessions) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live_server.url + "/sessions/")
        page.fill("input[name=username]", "operator")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(live_server.url + "/sessions/")
        yield page
        browser.close()
    assert errors == []


def bars(page) -> dict[str, dict[str, float]]:
    """The bar chart as Plotly drew it: site name -> {day: kWh}."""
    page.wait_for_function("() => document.querySelector('#daily-energy-chart')?.data?.length > 0")
    traces = page.evaluate(
        "() => document.querySelector('#daily-energy-chart').data.map(t => ({name: t.name, x: t.x, y: t.y}))"
    )
    return {t["name"]: dict(zip([day[:10] for day in t["x"]], t["y"], strict=True)) for t in traces}


def test_the_sessions_page_filters_totals_and_draws_daily_energy_per_site(page, sessions, live_server) -> None:
    today, yesterday = TODAY.date().isoformat(), (TODAY - timedelta(days=1)).date().isoformat()
    assert page.locator("[data-total=count]").inner_text() == "4"
    assert page.locator("[data-total=energy_kwh]").inner_text() == "20.87"
    assert page.locator("tr[data-session]").count() == 4
    assert bars(page) == {"Test site": {yesterday: 10.0, today: 0.12}, "Harbour": {yesterday: 6.25, today: 4.5}}
    # Plotly drew a bar per site and day.
    assert page.locator("#daily-energy-chart .bars .point").count() == 4

    page.select_option("select[name=site]", "harbour")
    page.fill("input[name=date_from]", yesterday)
    page.fill("input[name=date_to]", yesterday)
    page.click(".sessions-filter button[type=submit]")
    page.wait_for_url("**/sessions/?*site=harbour*")
    assert page.locator("[data-total=count]").inner_text() == "1"
    assert page.locator("[data-total=energy_kwh]").inner_text() == "6.25"
    assert page.locator("[data-total=duration]").inner_text() == "45 min 00 s"
    assert bars(page) == {"Harbour": {yesterday: 6.25}}
    href = page.locator("[data-sessions-csv]").get_attribute("href")
    assert href == f"/sessions/export.csv?site=harbour&date_from={yesterday}&date_to={yesterday}"
    with page.expect_download() as download:
        page.click("[data-sessions-csv]")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 2 and lines[1].split(",")[1:3] == ["cp-b", "harbour"]


def test_a_session_detail_draws_its_power_curve(page, sessions, live_server) -> None:
    page.goto(f"{live_server.url}/sessions/{sessions[0].pk}/")
    page.wait_for_function("() => document.querySelector('#session-power-chart')?.data?.length > 0")
    power_kw = page.evaluate("() => document.querySelector('#session-power-chart').data.at(-1).y")
    # The session's minute and 30 s either side hold all 60 stored records.
    assert power_kw == pytest.approx([7.0 + 0.1 * i for i in range(60)])
    assert "60 records" in page.locator("[data-curve-note]").inner_text()
