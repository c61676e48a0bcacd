"""runpoller's site load management on its /metrics: a real SiteController (its meter a simulated
Modbus device, its chargers' records fed as the poller's tap feeds them) inside a SiteControl,
exposed through collectors_for() and the metrics server, scraped over HTTP and parsed with
prometheus_client's parser.

Ground truth: the limit set up, the currents the meter is pinned at, the statuses and commands the
controller handed out (what the consumer and the chargers got), not the counters the collector reads.
"""

import asyncio
import urllib.request
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from django.conf import settings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.commands.messages import CommandMessage
from gateway.metrics.collectors import collectors_for
from gateway.metrics.server import start_metrics_server
from gateway.modbus.poller import Poller
from gateway.observe import Observed
from gateway.pipeline.reporter import StatusProbe
from gateway.simulator.fleet import SimulatorFleet
from gateway.sitecontrol import controller as controller_module
from gateway.sitecontrol.consume import build_site_status_consumer
from gateway.sitecontrol.control import SiteControl
from gateway.sitecontrol.controller import SiteController
from gateway.sitecontrol.lease import LeaseOutcome
from gateway.sitecontrol.messages import SITE_STATES, SiteStatus
from tests.conftest import wait_for, within
from tests.test_sitecontrol_controller import GENERIC, config_of, record
from tests.test_sitecontrol_meter import meter_config, pin

pytestmark = [pytest.mark.timeout(60)]

LIMIT_A = 40.0
QUIET_A = [12.0, 15.0, 9.0]  # the site meter's currents per phase: within the limit
OVER_A = [45.0, 15.0, 9.0]  # L1 above the limit: an urgent round
PHASES = ("L1", "L2", "L3")
PERIOD_S = 3.0
Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def series(samples: Samples, metric: str) -> dict[frozenset, float]:
    return {labels: v for (name, labels), v in samples.items() if name == metric}


async def test_each_site_s_limit_draw_allocation_state_and_rounds_as_its_status_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(settings.EVDASH, "METRICS_TOKEN", "")
    sent: list[CommandMessage] = []
    statuses: list[SiteStatus] = []
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=5) as meters:
        meter = meters.charge_points[0]
        pinned = list(QUIET_A)

        async def hold() -> None:  # the simulator's ticks rewrite the currents: pinned again every 50 ms
            while True:
                pin(meter, pinned)
                await asyncio.sleep(0.05)

        holding = asyncio.create_task(hold())
        control = SiteControl(
            poller_id="pm-1", deliver=sent.append, publish_status=statuses.append, polled=lambda: {"a", "b"}
        )
        # A 3 s period: an urgent round comes between two periodic ones (at most one a second).
        config = replace(config_of("a", "b", limit_a=LIMIT_A), meter=meter_config(meter), period_s=PERIOD_S)
        controller = SiteController(config, control.deliver, control.publish_status, poller_id="pm-1")
        control.controllers["lm-site"] = controller  # as SiteControl._controlled does once the lease is taken
        control.refused["far-site"] = LeaseOutcome("far-site", False, "pc-9", "host-9", 99, datetime.now(UTC))
        for slug in ("a", "b"):
            control.tap(lambda r: None)(record(slug, current_a=5.0))  # the poller's records, through the tap
        observed = Observed(
            "poller", "pm-1", {"poller": Poller(lambda r: None, poller_id="pm-1"), "site_control": control}
        )
        server = start_metrics_server(0, collectors=collectors_for(observed), readiness=lambda: [])
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        try:
            await wait_for(lambda: statuses and statuses[-1].draw_source == "meter", 15, "a round on the meter")
            pinned[:] = OVER_A
            await wait_for(
                lambda: controller.counters.urgent >= 1 and statuses[-1].draw_a[0] == OVER_A[0],
                15,
                "an urgent round on the over-limit reading",
            )
            stop.set()
            await within(task, 15)

            def broken(site, chargers, memory):
                raise ZeroDivisionError("a defect")

            monkeypatch.setattr(controller_module.allocation, "allocate", broken)
            controller.run_round()  # one failed round: said in its status, the state kept
            samples = await asyncio.to_thread(scrape, server.port)
        finally:
            stop.set()
            holding.cancel()
            await asyncio.gather(task, holding, return_exceptions=True)
            server.stop()

    status = controller.last_status
    assert status is statuses[-1] and status.state == "controlling"
    site = {"site": "lm-site"}
    assert value(samples, "evdash_site_limit_amperes", **site) == LIMIT_A
    for index, phase in enumerate(PHASES):
        assert value(samples, "evdash_site_draw_amperes", phase=phase, **site) == pytest.approx(OVER_A[index])
        # every charger is on L123: the phase's allocation is the sum of the chargers' shares
        allocated = sum(share.allocated_a or 0.0 for share in status.chargers)
        assert value(samples, "evdash_site_allocated_amperes", phase=phase, **site) == pytest.approx(allocated)
        assert value(samples, "evdash_site_allocated_amperes", phase=phase, **site) == status.allocated_a[index]
    assert value(samples, "evdash_site_headroom_amperes", **site) == pytest.approx(LIMIT_A - OVER_A[0])
    assert value(samples, "evdash_site_meter_age_seconds", **site) == status.meter_age_s
    assert 0 <= status.meter_age_s < meter_config(meter).stale_s
    assert value(samples, "evdash_site_status_timestamp_seconds", **site) == pytest.approx(status.at.timestamp())
    states = {
        (dict(labels)["site"], dict(labels)["state"]): v for labels, v in series(samples, "evdash_site_state").items()
    }
    expected = {(s, state): 0.0 for s in ("lm-site", "far-site") for state in SITE_STATES}
    expected |= {("lm-site", "controlling"): 1.0, ("far-site", "refused"): 1.0}
    assert states == expected

    # Every round published one status; the urgent ones came from the over-limit readings; one failed.
    period = value(samples, "evdash_site_control_rounds_total", kind="period", **site)
    urgent = value(samples, "evdash_site_control_rounds_total", kind="urgent", **site)
    assert period + urgent == len(statuses)
    assert urgent >= 1 and period >= 1
    failed = [s for s in statuses if "failed this round" in (s.reason or "")]
    assert value(samples, "evdash_site_control_errors_total", **site) == len(failed) == 1
    commands = {
        dict(labels)["action"]: v for labels, v in series(samples, "evdash_site_control_commands_total").items()
    }
    assert commands == Counter(command.action for command in sent) and commands
    assert 0 < value(samples, "evdash_site_control_round_seconds", **site) < 1.0
    # A refused site has its state and nothing else; the worker's own families are there beside them.
    far = {name for (name, labels), _v in samples.items() if ("site", "far-site") in labels}
    assert far == {"evdash_site_state"}
    assert value(samples, "evdash_worker_info", kind="poller", name="pm-1") == 1

    # The poller's status row (the pipeline page) says the same in its site_control block.
    block = StatusProbe(observed).stats()["site_control"]
    assert block == {
        "sites": 1,
        "refused": 1,
        "periods": len(statuses),
        "urgent": urgent,
        "errors": 1,
        "commands": dict(Counter(command.action for command in sent)),
    }


def test_a_scrape_inside_an_urgent_round_never_shows_the_periodic_rounds_going_back() -> None:
    # The controller's loop counts an urgent round's `urgent` just before run_round counts it among
    # `periods`: a scrape in between must not read one periodic round fewer (a false counter reset).
    control = SiteControl(poller_id="pm-2", deliver=lambda c: None, publish_status=lambda s: None, polled=set)
    controller = SiteController(config_of("a"), control.deliver, control.publish_status, poller_id="pm-2")
    control.controllers["lm-site"] = controller
    controller.on_record(record("a"))
    [collector] = [
        c
        for c in collectors_for(Observed("poller", "pm-2", {"poller": Poller(lambda r: None), "site_control": control}))
        if type(c).__name__ == "SiteControlCollector"
    ]
    registry = CollectorRegistry()
    registry.register(collector)

    def rounds() -> tuple[float, float]:
        samples = {
            sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples
            if sample.name == "evdash_site_control_rounds_total"
        }
        return samples["period"], samples["urgent"]

    controller.run_round()
    controller.run_round()
    assert rounds() == (2, 0)
    controller.counters.urgent += 1  # the loop's first step of an urgent round ...
    assert rounds() == (2, 1)  # ... scraped before run_round counted it
    controller.run_round(urgent=True)
    assert rounds() == (2, 1)
    controller.run_round()
    assert rounds() == (3, 1)


def test_runconsumer_s_site_status_consumer_has_its_own_group_label() -> None:
    statuses = build_site_status_consumer()
    observed = Observed("consumer", "evdash", {"groups": [], "results": None, "site_status": statuses})
    registry = CollectorRegistry()
    for collector in collectors_for(observed):
        registry.register(collector)
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    group = frozenset({("group", "site_status")})
    for name in ("evdash_consumer_records_total", "evdash_consumer_dead_lettered_total", "evdash_consumer_caught_up"):
        assert samples[(name, group)] == 0, name
    assert len(statuses.batch_observers) == 1  # its batch durations are measured too
