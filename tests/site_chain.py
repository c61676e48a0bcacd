"""The site load management chain for the end-to-end tests: simulated chargers and a simulated Eastron SDM630 site meter
on loopback, `runpoller`'s services.run_poller (the controller in the poller that owns the site)
publishing to Kafka, and runconsumer's services.run_consumer storing, alerting and pushing.

Ground truth is the simulated site: what its meter would measure (the building plus every car's
current, by wiring), the limit each charger holds and whether it has fallen back to its failsafe.
The expected shares and failsafe currents are worked out by hand from the site's numbers, in the
comments, never read from the controller.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings

from gateway import services
from gateway.choices import Wiring
from gateway.models import ChargePoint, DeviceProfile, Register, Site, StatusRule
from gateway.profiles.store import SHIPPED_DIR, SITE_METER_PROFILE, read_spec_file, save_spec, shipped_spec
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.site import SiteModel, SiteScript
from tests.conftest import shipped_profile
from tests.test_alerts import create_builtin_rules

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
LIMIT_A = 63.0
PERIOD_S = 5.0  # the default control period
SAMPLE_S = 0.1
RESULTS = Path(settings.BASE_DIR) / "test-results"

# Six three-phase chargers and four single-phase ones (on L1, L2, L3, L2): L2 carries 8 chargers.
WIRING = [Wiring.THREE_PHASE] * 6 + [Wiring.L1, Wiring.L2, Wiring.L3, Wiring.L2]
PRIORITIES = [5, 5, 3, 3, 1, 0, 2, 2, 0, 0]


def create_site(fleet: SimulatorFleet, **site_fields: object) -> Site:
    """The site in the database, as an operator sets it up in the admin: limit, meter, chargers."""
    create_builtin_rules()
    create_builtin_rules("0015_site_load_management")
    generic = shipped_profile("generic-ev-charger")
    fields: dict[str, object] = {"limit_a": LIMIT_A, "margin_a": 1.0, "base_load_a": 10.0, "control_period_s": PERIOD_S}
    if fleet.meter is not None:
        meter_profile = save_spec(shipped_spec(SITE_METER_PROFILE), DeviceProfile, Register, StatusRule)
        fields |= {"meter_profile": meter_profile, "meter_host": "127.0.0.1", "meter_port": fleet.meter.port}
    site = Site.objects.create(slug="car-park", name="Car park", **(fields | site_fields))
    for index, sim in enumerate(fleet.charge_points):
        ChargePoint.objects.create(
            slug=f"cp-{index}",
            name=f"CP {index}",
            site=site,
            host="127.0.0.1",
            port=sim.port,
            unit_id=sim.unit_id,
            profile=generic,
            poll_interval_ms=1000,
            priority=PRIORITIES[index] if index < len(PRIORITIES) else 0,
            wiring=WIRING[index] if index < len(WIRING) else Wiring.THREE_PHASE,
        )
    return site


def site_fleet(count: int = 10, building_a: float = 5.0, *, ignore: int | None = None) -> SimulatorFleet:
    """`count` generic chargers whose cars follow a limit after 1.5 s, each with a car that stays
    (3-phase, or 1-phase on a single-phase charger, up to 32 A), and the site meter."""
    fleet = SimulatorFleet(GENERIC, count, base_port=0, seed=7, scripted=True, response_delay_s=1.5)
    model = SiteModel.flat(building_a)
    fleet.attach_site(model, wiring=[str(w) for w in WIRING[:count]], meter_profile=shipped_spec(SITE_METER_PROFILE))
    script = SiteScript()
    for index in range(count):
        script.arrive(0.0, index, phases=3 if WIRING[index] == Wiring.THREE_PHASE else 1, max_current_a=32.0)
    model.run(script)
    if ignore is not None:
        fleet.charge_points[ignore].set_ignore_writes(True)
    return fleet


@dataclass
class Sample:
    at: float
    draw_a: tuple[float, float, float]
    limits_a: list[float]


@dataclass
class Watch:
    """What the site's meter would read and the limit each charger holds, every SAMPLE_S."""

    fleet: SimulatorFleet
    samples: list[Sample] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        site = self.fleet.site
        assert site is not None
        while not stop.is_set():
            self.samples.append(
                Sample(
                    time.monotonic(),
                    site.phase_currents_a(),
                    [sim.behaviour.max_current_a for sim in self.fleet.charge_points],
                )
            )
            await asyncio.sleep(SAMPLE_S)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]

    def over(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.between(start, end) if max(s.draw_a) > LIMIT_A]

    def overshoot_as(self, start: float, end: float) -> float:
        """∫ max(0, draw − limit) dt on the most loaded phase, A·s."""
        return sum(max(0.0, max(s.draw_a) - LIMIT_A) * SAMPLE_S for s in self.between(start, end))


@contextlib.asynccontextmanager
async def chain(fleet: SimulatorFleet, *, consumer: bool = False, **site_fields: object) -> AsyncIterator[Watch]:
    """The simulators, the site in the database (their ports known once they serve), the poller
    (and the consumer) running; the watch sampling meanwhile."""
    stop_watch, stop_poller, stop_consumer = asyncio.Event(), asyncio.Event(), asyncio.Event()
    watch = Watch(fleet)
    async with fleet:
        await sync_to_async(create_site)(fleet, **site_fields)
        tasks = [asyncio.create_task(watch.run(stop_watch))]
        if consumer:
            tasks.append(asyncio.create_task(services.run_consumer(stop_consumer)))
        tasks.append(asyncio.create_task(services.run_poller(stop_poller, poller_id="lm-e2e")))
        try:
            yield watch
        finally:
            stop_poller.set()
            stop_consumer.set()
            stop_watch.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 40)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


async def settle(
    watch: Watch,
    what: str,
    timeout_s: float = 60.0,
    quiet_s: float = 2 * PERIOD_S,
    min_s: float = 2 * PERIOD_S,
    accept: Callable[[list[float]], bool] = lambda limits: True,
) -> list[float]:
    """Wait at least `min_s` (a paused car resumes after 2 periods with room), then until no
    charger's limit changed for `quiet_s` and the limits are ones `accept`s; return them."""
    since = time.monotonic()
    deadline = since + timeout_s
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        recent = watch.between(now - quiet_s, now)
        settled = recent and all(s.limits_a == recent[-1].limits_a for s in recent)
        if settled and accept(recent[-1].limits_a) and now - since >= min_s and now - watch.samples[0].at > quiet_s:
            return recent[-1].limits_a
        if now >= deadline:
            changes, last = [], None
            for sample in watch.between(now - 30.0, now):
                if sample.limits_a != last:
                    changes.append(f"{sample.at - now:+.1f} s: {sample.limits_a} draw {sample.draw_a}")
                    last = sample.limits_a
            raise AssertionError(f"{what}: the limits did not settle within {timeout_s:.0f} s:\n" + "\n".join(changes))


async def all_charging(watch: Watch, what: str, timeout_s: float = 90.0) -> None:
    """Wait until the controller took over (no charger at the 32 A the simulators start with) and
    gave every charger room (a limit above 0)."""
    deadline = time.monotonic() + timeout_s
    while not (watch.samples and all(0.0 < limit < 32.0 for limit in watch.samples[-1].limits_a)):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.2)


def phases_of(index: int) -> set[int]:
    return {0, 1, 2} if WIRING[index] == Wiring.THREE_PHASE else {int(str(WIRING[index])[1]) - 1}
