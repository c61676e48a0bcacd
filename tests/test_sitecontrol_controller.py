"""The site controller in the poller: real simulated chargers, a real Poller and CommandRunner (its
journal and outbox in tmp_path), the SiteControl wired as services.run_poller wires it.

Ground truth is the simulators' own state (the cars' currents, the limits the chargers hold), not
what the controller says it did.
"""

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway.choices import CommandAction, CommandStatus, FailureReason
from gateway.commands.journal import CommandJournal
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.runner import CommandRunner
from gateway.kafka.topics import telemetry_topic
from gateway.kafka.transport import KafkaTransport
from gateway.modbus.poller import Poller
from gateway.models import AllocationOverride, ChargePoint, Site
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.publish.outbox import Outbox
from gateway.publish.outputs import command_result_topic
from gateway.publish.publisher import OutboxPublisher
from gateway.simulator.fleet import SimulatorFleet
from gateway.sitecontrol import controller as controller_module
from gateway.sitecontrol.allocate import Decision
from gateway.sitecontrol.config import ChargerConfig, SiteControlConfig
from gateway.sitecontrol.control import SiteControl
from gateway.sitecontrol.controller import SiteController
from gateway.sitecontrol.messages import SiteStatus
from tests.conftest import Collected, make_charge_point, shipped_profile, wait_for

pytestmark = [pytest.mark.timeout(60)]

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
PERIOD_S = 1.0
SETTLE_TIMEOUT_S = 25.0


@pytest.fixture(autouse=True)
def fast_reloads(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"RELOAD_INTERVAL_S": 0.5, "MODBUS_TIMEOUT_S": 1.0, "RECONNECT_BACKOFF_MAX_S": 2.0}.items():
        monkeypatch.setitem(settings.EVDASH, key, value)


@dataclass
class Harness:
    """A poller with its command runner and site control, and what they published."""

    poller: Poller
    runner: CommandRunner
    control: SiteControl
    records: Collected
    statuses: list[SiteStatus] = field(default_factory=list)

    def last_status(self) -> SiteStatus | None:
        return self.statuses[-1] if self.statuses else None

    def controller_results(self) -> list[CommandResult]:
        """The results the runner journaled for the controller's commands."""
        return [r for r in self.results if r.user.startswith("controller:")]

    results: list[CommandResult] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, poller_id: str = "pc-1") -> AsyncIterator[Harness]:
    """Poller + CommandRunner + SiteControl as services.run_poller ties them, until the block ends."""
    outbox = Outbox(tmp_path / f"{poller_id}.sqlite3")
    journal = CommandJournal(tmp_path / f"commands-{poller_id}.sqlite3")
    records = Collected()
    poller = Poller(records, poller_id=poller_id)
    publisher = OutboxPublisher(outbox, KafkaTransport(telemetry_topic()))  # not started: results stay in it
    runner = CommandRunner(poller, publisher, journal, poller_id=poller_id, result_topic=command_result_topic("kafka"))
    poller.hooks = runner
    harness = Harness(poller, runner, None, records)  # type: ignore[arg-type]
    control = SiteControl(
        poller_id=poller_id,
        deliver=runner.deliver,
        publish_status=harness.statuses.append,
        polled=lambda: set(poller.tasks),
    )
    harness.control = control
    poller.publish = control.tap(poller.publish)
    runner.result_listeners.append(control.on_result)
    runner.result_listeners.append(harness.results.append)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(poller.run(stop)), asyncio.create_task(control.run(stop))]
    try:
        yield harness
    finally:
        stop.set()
        done, _ = await asyncio.wait(tasks, timeout=15)
        assert len(done) == len(tasks), "the poller or the site control did not stop within 15 s"
        for task in tasks:
            assert task.exception() is None, task.exception()
        journal.close()
        outbox.close()


async def charging_site(
    *, count: int, limit_a: float, margin_a: float = 1.0, seed: int = 7, **site_fields: object
) -> tuple[SimulatorFleet, Site, list[ChargePoint]]:
    """`count` generic chargers, each with a 3-phase car charging, at a load-managed site."""
    fleet = SimulatorFleet(GENERIC, count, base_port=0, seed=seed, speedup=20.0)
    await fleet.start()
    for sim in fleet.charge_points:
        sim.behaviour.mean_fault_interval_s = math.inf
        sim.connect_vehicle(phases=3)

    def create() -> tuple[Site, list[ChargePoint]]:
        site = Site.objects.create(
            slug="lm-site", name="LM site", limit_a=limit_a, margin_a=margin_a, control_period_s=PERIOD_S, **site_fields
        )
        profile = shipped_profile("generic-ev-charger")
        cps = [make_charge_point(site, profile, f"lm-{i + 1}", sim.port) for i, sim in enumerate(fleet.charge_points)]
        return site, cps

    site, charge_points = await sync_to_async(create)()
    await wait_for(
        lambda: all(sim.behaviour.status == "charging" for sim in fleet.charge_points), 20, "every car charging"
    )
    return fleet, site, charge_points


def phase_sums(fleet: SimulatorFleet) -> list[float]:
    """What the cars draw on each phase, summed (the physics the limit is about)."""
    return [sum(sim.behaviour.currents_a[p] for sim in fleet.charge_points) for p in range(3)]


@pytest.mark.django_db(transaction=True)
async def test_without_a_meter_the_chargers_share_the_limit_by_their_own_currents(tmp_path: Path) -> None:
    # 3 cars of 16..32 A each behind 20 A per phase (19 A to share with the 1 A margin): unmanaged
    # they would draw 48 A or more per phase.
    fleet, _site, charge_points = await charging_site(count=3, limit_a=20.0)
    try:
        assert min(phase_sums(fleet)) > 40.0
        async with running(tmp_path) as harness:
            await wait_for(
                lambda: (
                    all(sim.behaviour.max_current_a <= 19.0 for sim in fleet.charge_points)
                    and max(phase_sums(fleet)) <= 19.0
                    and len(harness.controller_results()) >= len(charge_points)
                ),
                SETTLE_TIMEOUT_S,
                "the cars' draw within the limit, the limits verified",
            )
            status = harness.last_status()
            results = harness.controller_results()
    finally:
        await fleet.stop()
    assert status is not None
    assert (status.state, status.draw_source, status.meter_age_s) == ("controlling", "estimate", None)
    assert status.limit_a == 20.0
    assert {share.charge_point for share in status.chargers} == {cp.slug for cp in charge_points}
    assert sum(share.allocated_a for share in status.chargers) <= 19.0
    # Every charging car keeps at least the IEC 61851 minimum (6 A) or is paused.
    assert all(share.allocated_a == 0 or share.allocated_a >= 6.0 for share in status.chargers)
    # Sent through the command path: verified, journaled, audited as the controller's.
    assert results and all(r.status == CommandStatus.APPLIED for r in results), results
    assert {r.user for r in results} == {"controller:lm-site"}
    assert harness.control.counters["periods"] >= 1
    assert harness.control.counters["commands_set_current_limit"] >= 3


@pytest.mark.django_db(transaction=True)
async def test_an_override_takes_its_current_first_and_the_others_share_the_rest(tmp_path: Path) -> None:
    fleet, _site, charge_points = await charging_site(count=3, limit_a=31.0)
    favoured, favoured_sim = charge_points[0], fleet.charge_points[0]
    now = datetime.now(UTC)
    await AllocationOverride.objects.acreate(
        charge_point=favoured,
        charge_point_slug=favoured.slug,
        site_slug="lm-site",
        current_a=16.0,
        reason="fleet vehicle",
        username="alice",
        via="api",
        created_at=now,
        expires_at=now + timedelta(minutes=10),
    )
    try:
        async with running(tmp_path) as harness:
            await wait_for(
                lambda: (
                    favoured_sim.behaviour.max_current_a == 16.0
                    and all(sim.behaviour.max_current_a <= 7.0 for sim in fleet.charge_points[1:])
                ),
                SETTLE_TIMEOUT_S,
                "the override's 16 A and the others' 7 A in the chargers",
            )
            status = harness.last_status()
    finally:
        await fleet.stop()
    # 30 A to share: 16 A for the override, (30 - 16) / 2 = 7 A each for the others.
    shares = {share.charge_point: share for share in status.chargers}
    assert shares[favoured.slug].override_a == 16.0
    assert shares[favoured.slug].allocated_a == 16.0
    assert shares[favoured.slug].override_until is not None
    assert [shares[cp.slug].allocated_a for cp in charge_points[1:]] == [7.0, 7.0]


@pytest.mark.django_db(transaction=True)
async def test_a_charger_that_ignores_writes_is_counted_at_its_actual_draw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, _site, charge_points = await charging_site(count=3, limit_a=45.0)
    deaf, deaf_sim = charge_points[0], fleet.charge_points[0]
    deaf_sim.set_ignore_writes(True)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sitecontrol.controller"):
            async with running(tmp_path) as harness:

                def deaf_counted() -> bool:
                    status = harness.last_status()
                    shares = {s.charge_point: s for s in status.chargers} if status else {}
                    return deaf.slug in shares and shares[deaf.slug].state == "unresponsive"

                await wait_for(deaf_counted, SETTLE_TIMEOUT_S, "the deaf charger counted as unresponsive")
                status = harness.last_status()
                results = harness.controller_results()
    finally:
        await fleet.stop()
    shares = {share.charge_point: share for share in status.chargers}
    drawn = max(shares[deaf.slug].actual_a)
    assert drawn > 6.0  # it kept charging at its own rate
    assert shares[deaf.slug].allocated_a == pytest.approx(drawn, abs=0.6)
    # The others share only what it leaves: 44 A less its draw.
    others = sum(shares[cp.slug].allocated_a for cp in charge_points[1:])
    assert others <= 44.0 - drawn + 1e-6
    mismatches = [r for r in results if r.charge_point == deaf.slug]
    assert mismatches and mismatches[0].reason_code == FailureReason.READBACK_MISMATCH
    assert any(deaf.slug in r.getMessage() and "did not take" in r.getMessage() for r in caplog.records)


# --- the round's ordering, with the command path as a list ----------------------------------


def config_of(*slugs: str, limit_a: float = 40.0) -> SiteControlConfig:
    chargers = tuple(
        ChargerConfig(
            slug=slug,
            wiring="L123",
            priority=0,
            min_a=6.0,
            max_a=32.0,
            profile="generic-ev-charger",
            can_limit=True,
            can_pause=True,
            resume_first=False,
            failsafe_current=False,
            failsafe_timeout_s=None,
        )
        for slug in slugs
    )
    return SiteControlConfig(
        site="lm-site",
        site_id=1,
        limit_a=limit_a,
        period_s=PERIOD_S,
        margin_a=1.0,
        base_load_a=0.0,
        failsafe_timeout_s=30,
        chargers=chargers,
    )


def record(slug: str, status: str = "charging", current_a: float = 10.0) -> dict:
    return {
        "charge_point": slug,
        "site": "lm-site",
        "status": status,
        "values": {"current_l1_a": current_a, "current_l2_a": current_a, "current_l3_a": current_a},
    }


def scripted(targets: dict[str, float]):
    """An allocate() that decides `targets` (the ordering is what is tested here, not the sharing)."""

    def allocate(site, chargers, memory):
        return [Decision(c.slug, targets[c.slug], "charging" if targets[c.slug] else "paused", "") for c in chargers]

    return allocate


def applied(command: CommandMessage) -> CommandResult:
    return CommandResult.applied(command, command.value, poller="p")


def test_increases_wait_until_every_decrease_of_the_round_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[CommandMessage] = []
    controller = SiteController(config_of("a", "b"), sent.append, lambda status: None)
    for slug in ("a", "b"):
        controller.on_record(record(slug))
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 16.0, "b": 16.0}))
    controller.run_round()
    for command in list(sent):  # the first limits (unknown before: sent at once, as decreases)
        controller.on_result(applied(command))
    sent.clear()

    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 8.0, "b": 24.0}))
    controller.run_round()
    assert [(c.charge_point, c.value) for c in sent] == [("a", 8.0)]  # b's increase waits
    controller._release_increases()
    assert len(sent) == 1  # still waiting: a's decrease has no result yet
    controller.on_result(applied(sent[0]))
    controller._release_increases()
    assert [(c.charge_point, c.value) for c in sent] == [("a", 8.0), ("b", 24.0)]
    assert all(c.user == "controller:lm-site" and c.site == "lm-site" for c in sent)
    # Two periods, but at least 30 s: a paced charger's queue (a KEBA takes ~10 s a write) must not outlast it.
    assert all(c.expires_at - c.created_at == timedelta(seconds=max(2 * PERIOD_S, 30.0)) for c in sent)


def test_a_failed_decrease_holds_the_increases_back_to_the_next_period(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[CommandMessage] = []
    controller = SiteController(config_of("a", "b"), sent.append, lambda status: None)
    for slug in ("a", "b"):
        controller.on_record(record(slug))
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 16.0, "b": 16.0}))
    controller.run_round()
    for command in list(sent):
        controller.on_result(applied(command))
    sent.clear()
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 0.0, "b": 24.0}))
    controller.run_round()
    [pause] = sent
    assert pause.action == CommandAction.PAUSE
    controller.on_result(CommandResult.failed(pause, FailureReason.TIMEOUT, "no answer", poller="p"))
    controller._release_increases()
    assert sent == [pause]  # b is not raised while a may still draw


def test_a_failing_round_is_said_in_the_status_and_the_next_one_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses: list[SiteStatus] = []
    controller = SiteController(config_of("a"), lambda command: None, statuses.append)
    controller.on_record(record("a"))

    def broken(site, chargers, memory):
        raise ZeroDivisionError("a defect")

    monkeypatch.setattr(controller_module.allocation, "allocate", broken)
    controller.run_round()
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 10.0}))
    controller.run_round()
    assert "ZeroDivisionError" in (statuses[0].reason or "")
    assert statuses[1].reason is None and statuses[1].chargers[0].allocated_a == 10.0
    assert (controller.counters.periods, controller.counters.errors) == (2, 1)


def test_a_decrease_still_on_its_way_from_an_earlier_round_holds_the_next_rounds_increases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A KEBA settles 5 s per write: a decrease can outlast a 1 s period.
    sent: list[CommandMessage] = []
    controller = SiteController(config_of("a", "b"), sent.append, lambda status: None)
    for slug in ("a", "b"):
        controller.on_record(record(slug))
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 16.0, "b": 16.0}))
    controller.run_round()
    for command in list(sent):
        controller.on_result(applied(command))
    sent.clear()
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 8.0, "b": 16.0}))
    controller.run_round()
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 8.0, "b": 24.0}))
    controller.run_round()  # no decrease of its own, but a's is still on its way
    controller._release_increases()
    assert [(c.charge_point, c.value) for c in sent] == [("a", 8.0)]
    controller.on_result(applied(sent[0]))
    controller._release_increases()
    assert [(c.charge_point, c.value) for c in sent] == [("a", 8.0), ("b", 24.0)]


# --- the failsafe of chargers that cannot pause on it; a limit that changes by itself -------------


@pytest.mark.django_db(transaction=True)
async def test_chargers_whose_failsafe_takes_no_0_a_get_their_minimum_and_the_overflow_is_said(
    tmp_path: Path,
) -> None:
    # Vestel EVC04's failsafe current (2000) takes 6..32 A only (vendor range, nymea/evcc): a 0 A
    # would be refused and leave the charger at its own failsafe current. 3 Vestels behind 14 A
    # (13 A to share): 3 × 6 = 18 A, 5 A more than the room on every phase, and nothing lower
    # than 6 A can be written.
    vestel = read_spec_file(SHIPPED_DIR / "vestel-evc04.json")
    fleet = SimulatorFleet(vestel, 3, base_port=0, seed=11, speedup=20.0)
    await fleet.start()
    for sim in fleet.charge_points:
        sim.behaviour.mean_fault_interval_s = math.inf

    def create() -> None:
        site = Site.objects.create(
            slug="lm-site", name="LM site", limit_a=14.0, margin_a=1.0, control_period_s=PERIOD_S
        )
        profile = shipped_profile("vestel-evc04")
        for i, sim in enumerate(fleet.charge_points):
            make_charge_point(site, profile, f"vs-{i + 1}", sim.port, unit_id=sim.unit_id, priority=10 - i)

    await sync_to_async(create)()
    try:
        async with running(tmp_path) as harness:

            def failsafe_results() -> list[CommandResult]:
                return [r for r in harness.controller_results() if r.action == CommandAction.SET_FAILSAFE_CURRENT]

            await wait_for(lambda: len(failsafe_results()) >= 3, SETTLE_TIMEOUT_S, "three failsafe results")
            results = failsafe_results()
            status = harness.last_status()
    finally:
        await fleet.stop()
    assert [(r.status, r.value) for r in results] == [(CommandStatus.APPLIED, 6.0)] * 3, results
    # The chargers took them (the simulators' accepted writes), none refused.
    written = [
        [float(w.value) for w in sim.last_writes if w.register == "failsafe_current"] for sim in fleet.charge_points
    ]
    assert written == [[6.0], [6.0], [6.0]], written
    assert status is not None and "exceed the room by 5 A on phase L1, 5 A on phase L2 and 5 A on phase L3" in (
        status.reason or ""
    )


@pytest.mark.django_db(transaction=True)
async def test_a_limit_changed_behind_the_controllers_back_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 cars behind 20 A (19 A to share): 9 A each. Then one charger's limit becomes 32 A by itself
    # (a lapsed watchdog's vendor failsafe current, a reboot, a local app) while it stays online:
    # a write to its setpoint register that is not the controller's.
    fleet, _site, charge_points = await charging_site(count=2, limit_a=20.0)
    drifted, drifted_sim = charge_points[0], fleet.charge_points[0]
    setpoint = GENERIC.register("max_current")  # current_limit_a, 0.1 A, holding
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.sitecontrol.controller"):
            async with running(tmp_path) as harness:
                await wait_for(lambda: "lm-site" in harness.control.controllers, SETTLE_TIMEOUT_S, "the controller")
                controller = harness.control.controllers["lm-site"]

                def settled() -> bool:
                    # Both at 9 A in the chargers and verified (no command on its way to either).
                    return (
                        all(sim.behaviour.max_current_a == 9.0 for sim in fleet.charge_points)
                        and controller.limit_a == {cp.slug: 9.0 for cp in charge_points}
                        and not controller.pending
                    )

                await wait_for(settled, SETTLE_TIMEOUT_S, "9 A in both chargers, verified")
                assert drifted_sim.write_words(drifted_sim.unit_id, 6, setpoint.address, [320]) is None
                assert drifted_sim.behaviour.max_current_a == 32.0
                await wait_for(
                    lambda: drifted_sim.behaviour.max_current_a == 9.0,
                    SETTLE_TIMEOUT_S,
                    "the controller's 9 A back in the charger",
                )
                restored = [
                    r
                    for r in harness.controller_results()
                    if r.charge_point == drifted.slug and r.action == CommandAction.SET_CURRENT_LIMIT
                ]
    finally:
        await fleet.stop()
    assert restored[-1].status == CommandStatus.APPLIED and restored[-1].value == 9.0
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and drifted.slug in r.getMessage()
    ]
    assert any("32 A" in m and "9 A" in m for m in warnings), warnings
    assert fleet.charge_points[1].behaviour.max_current_a == 9.0


def test_a_charger_gets_one_change_at_a_time_unless_it_must_go_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    """A paced charger (KEBA: ~10 s a write) would queue every round's change and see them expire:
    while a change is on its way, a higher target waits; only a further cut is sent at once."""
    sent: list[CommandMessage] = []
    controller = SiteController(config_of("a"), sent.append, lambda status: None)
    controller.on_record(record("a"))
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 16.0}))
    controller.run_round()
    assert [(c.charge_point, c.value) for c in sent] == [("a", 16.0)]
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 20.0}))
    controller.run_round()  # 16 A still on its way: 20 A waits
    assert [(c.charge_point, c.value) for c in sent] == [("a", 16.0)]
    monkeypatch.setattr(controller_module.allocation, "allocate", scripted({"a": 10.0}))
    controller.run_round()  # lower than what is on its way: at once
    assert [(c.charge_point, c.value) for c in sent] == [("a", 16.0), ("a", 10.0)]


# --- a restart among cars already charging --------------------------------------------------------


class FakeMeter:
    """The site meter as the controller reads it (the real reader is tested on a simulated SDM630)."""

    def __init__(self, config, *, clock, on_reading) -> None:
        self.clock, self.on_reading = clock, on_reading
        self.current_a = None
        self.read_at = None
        self.problem = None

    def read(self, phases: tuple[float, float, float]) -> None:
        self.current_a, self.read_at = phases, self.clock()
        self.on_reading(phases)

    def age_s(self, now=None):
        return None if self.read_at is None else (self.clock() if now is None else now) - self.read_at

    def stale(self, now=None) -> bool:
        age = self.age_s(now)
        return age is None or age > 5.0

    async def run(self, stop) -> None:
        await stop.wait()


def test_a_restarted_controller_keeps_the_cars_found_charging_within_the_limit(monkeypatch) -> None:
    """Three 3-phase cars charge at 16 A (their chargers read back a 16 A limit) and the building
    takes 10 A: the meter reads 58 A of a 63 A limit. Room: 63 − 1 − 10 = 52 A, 17.3 A each, so a
    restarted controller raises each to 17 A. It must neither take the cars it has no record of yet
    for building load (58 − 16 = 42 A of "building" pauses two of them) nor start them from their
    6 A minimum."""
    now = [1000.0]
    sent: list[CommandMessage] = []
    config = config_of("a", "b", "c", limit_a=63.0)
    config = SiteControlConfig(**{**config.__dict__, "meter": object()})
    controller = SiteController(config, sent.append, lambda status: None, clock=lambda: now[0], meter_factory=FakeMeter)
    meter = controller.meter
    draw = (58.0, 58.0, 58.0)

    def charging(slug: str) -> dict:
        found = record(slug, current_a=16.0)
        found["values"]["current_limit_a"] = 16.0
        return found

    controller.on_record(charging("a"))
    for _ in range(3):  # the meter answers before b and c were polled
        now[0] += 1.0
        meter.read(draw)
    assert not controller._ready_to_start()
    for slug in ("b", "c"):
        controller.on_record(charging(slug))
    assert not controller._ready_to_start()  # the base is not settled yet
    for _ in range(2):
        now[0] += 1.0
        meter.read(draw)
    assert controller._ready_to_start()
    status = controller.run_round()
    assert status.base_load_a == (10.0, 10.0, 10.0)
    assert sorted((c.charge_point, c.value) for c in sent) == [("a", 17.0), ("b", 17.0), ("c", 17.0)]
