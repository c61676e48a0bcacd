"""Readiness of site load management: runconsumer's site-status consumer is checked as its other
consumers are (connected to Kafka, partitions assigned), and runpoller's site controllers are
checked for rounds that keep failing or stopped coming (gateway/health/sites.py). A site in
fallback or refused is not a failure of the poller.

The consumer runs against the embedded Kafka broker; the controllers are real SiteControllers
whose rounds this test runs (or whose loop it runs and stops), with a defect injected into the
sharing. Each probe is called from a thread, as the metrics server calls it.
"""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.health import sites, workers
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.topics import ensure_topics
from gateway.observe import Observed
from gateway.sinks import SinkGroup
from gateway.sitecontrol import controller as controller_module
from gateway.sitecontrol.config import MeterConfig
from gateway.sitecontrol.consume import JOB_NAME, build_site_status_consumer, site_status_jobs
from gateway.sitecontrol.control import SiteControl
from gateway.sitecontrol.controller import SiteController
from gateway.sitecontrol.lease import LeaseOutcome
from tests.conftest import free_port, wait_for, within
from tests.test_health import probe_until
from tests.test_sitecontrol_controller import GENERIC, config_of, record

pytestmark = [pytest.mark.timeout(90)]


def by_name(results: list) -> dict[str, tuple[bool, str]]:
    return {result.name: (result.ok, result.detail) for result in results}


@pytest.mark.django_db(transaction=True)
async def test_a_stalled_site_status_consumer_makes_the_consumer_unready(kafka) -> None:
    await ensure_topics([kafka["TELEMETRY_TOPIC"]])
    live = TelemetryConsumer(kafka["TELEMETRY_TOPIC"], sinks=[])
    statuses = build_site_status_consumer()  # as runconsumer builds it (services.run_consumer)
    observed = Observed(
        "consumer", "test", {"groups": [SinkGroup("live", live)], "results": None, "site_status": statuses}
    )
    readiness = workers.readiness_for(observed)
    before = by_name(await asyncio.to_thread(readiness))
    assert before["kafka (site status)"] == (False, "not connected to Kafka")

    run_site_statuses, _cost = site_status_jobs(consumer=statuses)[JOB_NAME]
    stop_live, stop_sites = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(live.run(stop_live)), asyncio.create_task(run_site_statuses(stop_sites))]
    try:
        ready = by_name(await probe_until(readiness, ready=True, timeout_s=30))
        assert ready["kafka (site status)"] == (True, "connected, lag 0")
        # The site-status consumer stops (its job ended) while the live one goes on: not ready,
        # and the one check that says so names it.
        stop_sites.set()
        await within(tasks[1], 20)
        red = by_name(await probe_until(readiness, ready=False, timeout_s=10))
        assert {name: result for name, result in red.items() if not result[0]} == {
            "kafka (site status)": (False, "not connected to Kafka")
        }
    finally:
        stop_live.set()
        stop_sites.set()
        await within(asyncio.gather(*tasks, return_exceptions=True), 20)


def site_control(*controllers: SiteController) -> SiteControl:
    control = SiteControl(poller_id="pr-1", deliver=lambda c: None, publish_status=lambda s: None, polled=set)
    for controller in controllers:
        control.controllers[controller.config.site] = controller  # as SiteControl does once it holds the lease
    return control


def controller_of(config=None) -> SiteController:
    controller = SiteController(config or config_of("a"), lambda c: None, lambda s: None, poller_id="pr-1")
    controller.on_record(record("a"))
    return controller


async def test_a_site_controller_whose_rounds_keep_failing_makes_the_poller_unready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller = controller_of()
    control = site_control(controller)
    control.refused["far-site"] = LeaseOutcome("far-site", False, "pc-9", "host-9", 99, datetime.now(UTC))
    check = workers.site_control_check(control)
    controller.run_round()
    assert by_name([await asyncio.to_thread(check)]) == {"site control": (True, "1 site controlled, 1 refused")}

    def broken(site, chargers, memory):
        raise ZeroDivisionError("a defect")

    allocate = controller_module.allocation.allocate
    monkeypatch.setattr(controller_module.allocation, "allocate", broken)
    # Rounds failing, one look each: a blip is not a failure of the poller, the third in a row is.
    for _round in range(sites.FAILED_IN_A_ROW - 1):
        controller.run_round()
        assert (await asyncio.to_thread(check)).ok
    controller.run_round()
    result = await asyncio.to_thread(check)
    assert not result.ok
    assert result.detail == "site lm-site: its last 3 control rounds failed; the chargers keep their limits"
    controller.run_round()  # failing on, seen at one look
    controller.run_round()
    assert (await asyncio.to_thread(check)).detail.startswith("site lm-site: its last 5 control rounds failed")

    # Fixed: one round goes through and the poller is ready again.
    monkeypatch.setattr(controller_module.allocation, "allocate", allocate)
    controller.run_round()
    assert (await asyncio.to_thread(check)).ok


async def test_a_site_in_fallback_is_not_a_failure_of_the_poller() -> None:
    # A meter nobody serves: never read, so every round is in fallback (failsafe shares).
    meter = MeterConfig(profile=GENERIC, host="127.0.0.1", port=free_port(), unit_id=1, stale_s=2.0)
    controller = controller_of(replace(config_of("a"), meter=meter))
    check = workers.site_control_check(site_control(controller))
    for _round in range(sites.FAILED_IN_A_ROW + 1):
        controller.run_round()
    assert controller.last_status.state == "fallback"
    assert by_name([await asyncio.to_thread(check)]) == {"site control": (True, "1 site controlled")}


async def test_a_controller_that_stopped_running_rounds_makes_the_poller_unready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Overdue after three periods (1 s here) rather than the 10 s floor, so the test takes seconds.
    monkeypatch.setattr(sites, "OVERDUE_AT_LEAST_S", 0.0)
    controller = controller_of()
    check = workers.site_control_check(site_control(controller))
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        await wait_for(lambda: controller.last_status is not None, 10, "the controller's first round")
        assert (await asyncio.to_thread(check)).ok
        stop.set()  # the loop ends, as when it dies; the controller stays in the SiteControl
        await within(task, 10)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    result = await probe_until(check, ready=False, timeout_s=15)
    assert result.detail.startswith("site lm-site: no control round for ")
    assert result.detail.endswith(" s (one is due every 1 s)")
