"""Metrics of runpoller's site load management (gateway.sitecontrol.control.SiteControl): per site
the limit, the draw and the allocations per phase, the headroom, the state, the meter's age, and
the controller's rounds, failed rounds, commands and last round's duration.

Read at scrape time, from the metrics server's thread, from what the controllers keep anyway
(SiteController.counters, .last_status, .state; SiteControl.controllers and .refused): a control
round pays nothing for them. The `site` label is bounded by the sites this poller controls or
refuses (one SiteController each), a handful per poller, not by its charge points.

The gauges of a controlled site are as of its last round (SiteStatus, once per control period):
evdash_site_status_timestamp_seconds says when that was, so an alert can tell a controller that
stopped publishing from a site that is quiet.
"""

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from gateway.metrics.families import copy_of, labelled_counter, labelled_gauge
from gateway.sitecontrol.messages import SITE_STATES, SiteStatus

if TYPE_CHECKING:  # read only: the metrics need no import of the controller's machinery
    from gateway.sitecontrol.control import SiteControl
    from gateway.sitecontrol.controller import SiteController

PHASES = ("L1", "L2", "L3")
PERIOD, URGENT = "period", "urgent"
REFUSED = "refused"


class PeriodRounds:
    """A controller's periodic rounds (all rounds less the urgent ones), never seen going back.

    The controller counts an urgent round's `urgent` a few bytecodes before its `periods`; a scrape
    falling between them would read one periodic round fewer than the scrape before, which
    Prometheus takes for a counter reset (a spike of the whole count in rate()). Remembered per
    controller (weakly: a controller that stops is forgotten; its successor starts from 0, a real reset).
    """

    def __init__(self) -> None:
        self._seen: weakref.WeakKeyDictionary[SiteController, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # scrapes may run on two server threads at once

    def of(self, controller: "SiteController") -> int:
        counters = controller.counters
        rounds = max(0, counters.periods - counters.urgent)
        with self._lock:
            rounds = max(rounds, self._seen.get(controller, 0))
            self._seen[controller] = rounds
        return rounds


class SiteControlCollector:
    """A prometheus_client collector over one poller's SiteControl (Observed.parts["site_control"])."""

    def __init__(self, control: "SiteControl") -> None:
        self.control = control
        self.period_rounds = PeriodRounds()

    def collect(self) -> Iterator[Metric]:
        controlled = copy_of(self.control.controllers)
        controllers = sorted(controlled.items())
        refused = sorted(site for site in copy_of(self.control.refused) if site not in controlled)
        statuses: list[tuple[str, SiteStatus]] = [
            (site, status) for site, controller in controllers if (status := controller.last_status) is not None
        ]
        yield labelled_gauge(
            "evdash_site_limit_amperes",
            "The site's limit per phase (A) as its controller last applied it.",
            ["site"],
            (([site], _limit_a(controller)) for site, controller in controllers),
        )
        yield _per_phase(
            "evdash_site_draw_amperes",
            "The site's draw per phase at the last control round (meter, or chargers + base load).",
            ((site, status.draw_a) for site, status in statuses),
        )
        yield _per_phase(
            "evdash_site_allocated_amperes",
            "The chargers' allocations in force at the last control round, summed per phase.",
            ((site, status.allocated_a) for site, status in statuses),
        )
        yield labelled_gauge(
            "evdash_site_headroom_amperes",
            "The limit less the draw on the most loaded phase at the last control round (negative: over).",
            ["site"],
            (([site], status.headroom_a) for site, status in statuses),
        )
        yield labelled_gauge(
            "evdash_site_state",
            "1 for the site's control state (controlling, fallback, refused, starting), 0 for the others.",
            ["site", "state"],
            (
                ([site, state], int(state == current))
                for site, current in [(site, _state(c)) for site, c in controllers] + [(s, REFUSED) for s in refused]
                for state in SITE_STATES
            ),
        )
        yield labelled_gauge(
            "evdash_site_meter_age_seconds",
            "Seconds since the site meter's last good reading, at the last control round (sites with a meter).",
            ["site"],
            (([site], status.meter_age_s) for site, status in statuses if status.meter_age_s is not None),
        )
        yield labelled_gauge(
            "evdash_site_status_timestamp_seconds",
            "When the site's last control round ended (Unix time): the gauges above are as of then.",
            ["site"],
            (([site], status.at.timestamp()) for site, status in statuses),
        )
        yield from self._counters(controllers)

    def _counters(self, controllers: "list[tuple[str, SiteController]]") -> Iterator[Metric]:
        yield labelled_counter(
            "evdash_site_control_rounds_total",
            "Control rounds run, by kind: period (every control period) or urgent (a meter reading above the limit).",
            ["site", "kind"],
            (
                row
                for site, controller in controllers
                for row in (
                    ([site, PERIOD], self.period_rounds.of(controller)),
                    ([site, URGENT], controller.counters.urgent),
                )
            ),
        )
        yield labelled_counter(
            "evdash_site_control_errors_total",
            "Control rounds that failed (the chargers kept their limits; the status says why).",
            ["site"],
            (([site], controller.counters.errors) for site, controller in controllers),
        )
        yield labelled_counter(
            "evdash_site_control_commands_total",
            "Commands the controller handed to the command path, by action.",
            ["site", "action"],
            (
                ([site, action], count)
                for site, controller in controllers
                for action, count in sorted(copy_of(controller.counters.commands).items())
            ),
        )
        yield labelled_gauge(
            "evdash_site_control_round_seconds",
            "How long the last control round's work took (measure, allocate, send).",
            ["site"],
            (([site], controller.counters.last_period_s) for site, controller in controllers),
        )


def _limit_a(controller: "SiteController") -> float:
    """The limit of the last status (what the other gauges are measured against), else the config's."""
    status = controller.last_status
    return controller.config.limit_a if status is None else status.limit_a


def _state(controller: "SiteController") -> str:
    status = controller.last_status
    return controller.state if status is None else status.state


def _per_phase(name: str, documentation: str, values: Iterator[tuple[str, Any]]) -> Metric:
    return labelled_gauge(
        name,
        documentation,
        ["site", "phase"],
        (
            ([site, phase], current_a)
            for site, phases in values
            for phase, current_a in zip(PHASES, phases, strict=True)
        ),
    )
