"""The pipeline-health page as an operator meets it: `manage.py demo` running (edge path: poller ->
MQTT -> bridge -> Kafka -> consumer), Chromium on /pipeline/: the three stages green with their
hop latencies, updated live, the poller's card with its site controllers and the consumer's with
its site-status consumer; the poller hung (SIGSTOP) turns red as stopped, named in the verdict,
and green again once it runs (SIGCONT); a site whose lease another poller holds shows red as refused."""

import os
import re
import signal
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.test_browser import SCREENSHOTS, demo, log_in, page  # noqa: F401 (fixtures: this module's own demo)

pytestmark = pytest.mark.browser

STAGE = "[data-stages] [data-kind={kind}]"


@pytest.fixture(scope="module", autouse=True)
def fast_reports() -> Iterator[None]:
    """The demo's processes report every second (default 5): a hung one is red within 3 s."""
    previous = os.environ.get("EVDASH_STAGE_STATUS_INTERVAL_S")
    os.environ["EVDASH_STAGE_STATUS_INTERVAL_S"] = "1"
    yield
    if previous is None:
        os.environ.pop("EVDASH_STAGE_STATUS_INTERVAL_S", None)
    else:
        os.environ["EVDASH_STAGE_STATUS_INTERVAL_S"] = previous


def records_of(page, kind: str) -> str:  # noqa: F811
    return page.locator(STAGE.format(kind=kind) + " [data-figure=records] dd").inner_text()


def test_the_pipeline_page_shows_the_stages_live_and_a_hung_poller_turns_red(demo: dict, page) -> None:  # noqa: F811
    log_in(page, demo["url"])
    page.click("nav >> text=Pipeline")
    page.wait_for_url(demo["url"] + "/pipeline/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
    # All three stages report and are green; the verdict says data flows.
    for kind in ("poller", "bridge", "consumer"):
        page.wait_for_selector(STAGE.format(kind=kind) + "[data-state=ok]", timeout=30_000)
    page.wait_for_selector("[data-verdict][data-state=ok]", timeout=10_000)
    assert "data flows" in page.locator("[data-verdict-why]").inner_text()
    # Every hop measured, the browser's by this page over its own socket.
    for hop in ("poll", "mqtt", "kafka", "consumer", "browser"):
        page.wait_for_selector(f'[data-hop="{hop}"]:not([data-samples="0"])', timeout=30_000)
        value = page.locator(f'[data-hop="{hop}"] [data-hop-value]').inner_text()
        assert re.fullmatch(r"[\d.]+ m?s / [\d.]+ m?s", value), (hop, value)
    assert page.locator(STAGE.format(kind="poller") + " [data-figure=outbox]").count() == 1
    assert page.locator(STAGE.format(kind="consumer") + " [data-figure=lag]").count() == 1
    assert page.locator(STAGE.format(kind="consumer") + " [data-figure=dead-letters]").count() == 1
    # The poller's site load management: the demo site (its limit, its simulated meter) controlled,
    # green, its rounds counted; the consumer's site-status consumer consuming its statuses.
    demo_site = STAGE.format(kind="poller") + " [data-site-control] [data-site=demo-site]"
    page.wait_for_selector(demo_site + "[data-site-state=controlling]", timeout=30_000)
    rounds = page.locator(demo_site + " [data-site-figure=rounds] dd").inner_text()
    assert re.fullmatch(r"[\d,]+ · [\d,]+ urgent", rounds) and not rounds.startswith("0 "), rounds
    assert page.locator(demo_site + " [data-site-figure=last-round] dd").inner_text().endswith(" ms")
    assert page.locator(demo_site + " .pipeline-state").evaluate("el => getComputedStyle(el).backgroundColor") == (
        "rgb(22, 163, 74)"  # green
    )
    site_status = STAGE.format(kind="consumer") + " [data-consumer=site_status] dd"
    page.wait_for_function(
        "sel => /^lag \\d+ · [1-9][\\d,]* handled · 0 dead-lettered$/.test(document.querySelector(sel)?.textContent)",
        arg=site_status,
        timeout=30_000,
    )

    # Live: the counters move without a reload.
    before = records_of(page, "consumer")
    page.wait_for_function(
        "([sel, before]) => document.querySelector(sel)?.textContent !== before",
        arg=[STAGE.format(kind="consumer") + " [data-figure=records] dd", before],
        timeout=15_000,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-pipeline.png"), full_page=True)

    # The poller hangs: no more reports. Within a few seconds its card is red (stopped), and the
    # verdict names it; then it runs again and is green.
    pid = int(page.locator(STAGE.format(kind="poller")).get_attribute("data-pid"))
    assert pid != demo["process"].pid  # the demo's child, not the web process
    os.kill(pid, signal.SIGSTOP)
    try:
        page.wait_for_selector(STAGE.format(kind="poller") + "[data-state=stopped]", timeout=15_000)
        why = page.locator(STAGE.format(kind="poller") + " [data-why]").inner_text()
        assert "no report for" in why and "died, hangs" in why
        page.wait_for_selector("[data-verdict][data-state=stopped]", timeout=5_000)
        assert page.locator("[data-verdict-why]").inner_text().startswith("Poller ")
        color = page.locator(STAGE.format(kind="poller") + " [data-stage-state]").evaluate(
            "el => getComputedStyle(el).backgroundColor"
        )
        assert color == "rgb(153, 27, 27)"  # red
        page.screenshot(path=str(SCREENSHOTS / "dashboard-pipeline-stopped.png"), full_page=True)
    finally:
        os.kill(pid, signal.SIGCONT)
    page.wait_for_selector(STAGE.format(kind="poller") + "[data-state=ok]", timeout=20_000)
    page.wait_for_selector("[data-verdict][data-state=ok]", timeout=20_000)

    # The depot gets a connection limit, but another poller holds its lease: refused, a red line on
    # the poller's card naming the holder, beside the demo site's green one.
    with sqlite3.connect(demo["database"]) as db:
        db.execute("UPDATE gateway_site SET limit_a = 32 WHERE slug = 'depot'")
        db.execute(
            "INSERT INTO gateway_sitecontrollease (site_id, poller_id, host, pid, renewed_at) "
            "SELECT id, 'other-poller', 'other-host', 4242, ? FROM gateway_site WHERE slug = 'depot'",
            ((datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f"),),  # fresh for an hour
        )
    try:
        depot = STAGE.format(kind="poller") + " [data-site-control] [data-site=depot]"
        page.wait_for_selector(depot + "[data-site-state=refused]", timeout=20_000)
        assert page.locator(depot + " [data-site-figure=holder] dd").inner_text() == "poller other-poller on other-host"
        assert "controlled by poller other-poller" in page.locator(depot + " [data-site-why]").inner_text()
        assert page.locator(depot + " .pipeline-state").evaluate("el => getComputedStyle(el).backgroundColor") == (
            "rgb(220, 38, 38)"  # red
        )
        assert page.locator(demo_site).get_attribute("data-site-state") == "controlling"
        page.screenshot(path=str(SCREENSHOTS / "dashboard-pipeline-sites.png"), full_page=True)
    finally:
        with sqlite3.connect(demo["database"]) as db:
            db.execute("DELETE FROM gateway_sitecontrollease WHERE poller_id = 'other-poller'")
            db.execute("UPDATE gateway_site SET limit_a = NULL WHERE slug = 'depot'")
