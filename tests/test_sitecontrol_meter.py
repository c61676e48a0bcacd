"""The site meter: MeterReader against a real Modbus server, and the controller driven by it (the
base load it measures, the urgent reaction to a phase above the limit, the fallback when it dies).

The meter here is a simulated device serving a profile with the three phase-current roles, its
currents kept at what a meter at the site's connection would read: the building load plus every
simulated car's current on that phase (physics, not the controller's word).
"""

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from gateway.models import Site
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.server import SimulatedChargePoint
from gateway.sitecontrol.config import MeterConfig
from gateway.sitecontrol.meter import MeterReader
from tests.conftest import shipped_profile, wait_for, within
from tests.test_sitecontrol_controller import GENERIC, charging_site, phase_sums, running

pytestmark = [pytest.mark.timeout(60)]

PHASE_REGISTERS = ("current_l1", "current_l2", "current_l3")


def meter_config(sim: SimulatedChargePoint, stale_s: float = 2.0) -> MeterConfig:
    return MeterConfig(profile=GENERIC, host="127.0.0.1", port=sim.port, unit_id=sim.unit_id, stale_s=stale_s)


def pin(meter: SimulatedChargePoint, currents_a: list[float]) -> None:
    for name, current in zip(PHASE_REGISTERS, currents_a, strict=True):
        meter.set_value(name, round(current, 2))


@contextlib.asynccontextmanager
async def site_meter(fleet: SimulatorFleet, building_a: list[float]) -> AsyncIterator[SimulatedChargePoint]:
    """A meter at the connection: building_a (mutable: a load step) plus the cars, refreshed every 50 ms."""
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=99) as meters:
        meter = meters.charge_points[0]
        meter.behaviour.mean_fault_interval_s = math.inf

        async def follow() -> None:
            while True:
                cars = phase_sums(fleet)
                pin(meter, [b + c for b, c in zip(building_a, cars, strict=True)])
                await asyncio.sleep(0.05)

        pin(meter, building_a)
        task = asyncio.create_task(follow())
        try:
            yield meter
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def use_meter(site: Site, meter: SimulatedChargePoint, **fields: object) -> None:
    def update() -> None:
        profile = shipped_profile("generic-ev-charger")
        Site.objects.filter(pk=site.pk).update(
            meter_profile=profile, meter_host="127.0.0.1", meter_port=meter.port, meter_unit_id=1, **fields
        )

    await sync_to_async(update)()


# --- the reader --------------------------------------------------------------------------------


async def test_the_reader_gives_the_meters_per_phase_currents() -> None:
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=1) as meters:
        sim = meters.charge_points[0]
        pin(sim, [41.5, 7.25, 0.0])
        seen: list[tuple[float, float, float]] = []
        reader = MeterReader(meter_config(sim), on_reading=seen.append)
        try:
            reading = await within(reader.read_once(), 10)
        finally:
            await reader.connection.close()
    assert reading == pytest.approx((41.5, 7.25, 0.0))
    assert seen == [reading]
    assert reader.age_s() is not None and reader.age_s() < 1.0
    assert not reader.stale()


async def test_a_dead_meter_goes_stale_without_stopping_the_reader() -> None:
    meters = SimulatorFleet(GENERIC, 1, base_port=0, seed=2)
    await meters.start()
    sim = meters.charge_points[0]
    pin(sim, [10.0, 10.0, 10.0])
    reader = MeterReader(meter_config(sim, stale_s=1.0), interval_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        await wait_for(lambda: reader.current_a is not None, 10, "a first reading")
        await meters.stop()  # the meter dies: connection refused from now on
        await wait_for(lambda: reader.stale(), 10, "the reading to go stale")
        assert not task.done()  # the loop goes on, trying
        assert reader.failures > 0 and reader.problem
        assert reader.current_a == pytest.approx((10.0, 10.0, 10.0))  # the last good one is kept, with its age
        assert reader.age_s() > 1.0
    finally:
        stop.set()
        await within(task, 10)


# --- the controller with a meter -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_with_a_meter_the_chargers_get_what_the_building_leaves(tmp_path: Path) -> None:
    fleet, site, _cps = await charging_site(count=2, limit_a=40.0)
    building_a = [12.0, 8.0, 4.0]
    try:
        async with site_meter(fleet, building_a) as meter:
            await use_meter(site, meter)
            async with running(tmp_path) as harness:

                def settled() -> bool:
                    status = harness.last_status()
                    return (
                        status is not None
                        and status.draw_source == "meter"
                        and [share.allocated_a for share in status.chargers] == [13.0, 13.0]
                        and all(sim.behaviour.max_current_a == 13.0 for sim in fleet.charge_points)
                    )

                await wait_for(settled, 25, "the chargers within what the building leaves")
                status = harness.last_status()
                site_draw_a = max(building_a[p] + phase_sums(fleet)[p] for p in range(3))
    finally:
        await fleet.stop()
    assert status.state == "controlling"
    assert status.meter_age_s is not None and status.meter_age_s < 2.0
    # The non-EV load is what the meter sees beyond the chargers: about the building's 12/8/4 A.
    assert status.base_load_a == pytest.approx(building_a, abs=1.5)
    # 40 A - 1 A margin - 12 A on L1 (the loaded phase) = 27 A for two 3-phase cars: 13 A each,
    # and the site's draw within the limit on every phase.
    assert site_draw_a <= 39.0


@pytest.mark.django_db(transaction=True)
async def test_a_phase_above_the_limit_is_acted_on_at_once_not_at_the_next_period(tmp_path: Path) -> None:
    # A 20 s period: only the urgent reaction can bring the site back within the limit in time.
    fleet, site, _cps = await charging_site(count=2, limit_a=40.0)
    building_a = [5.0, 5.0, 5.0]
    try:
        async with site_meter(fleet, building_a) as meter:
            await use_meter(site, meter, control_period_s=20.0)
            async with running(tmp_path) as harness:
                await wait_for(lambda: harness.statuses, 25, "the first round")
                await wait_for(
                    lambda: (
                        max(building_a[p] + phase_sums(fleet)[p] for p in range(3)) <= 39.0
                        and not harness.control.controllers["lm-site"].pending
                    ),
                    25,
                    "the first limits in force",
                )
                periods = harness.control.counters["periods"]
                # A load step: 35 A + the cars' 2 x 6 A is over the limit; 4 A left is below a car's minimum.
                building_a[:] = [35.0, 35.0, 35.0]
                stepped_at = time.monotonic()
                await wait_for(
                    lambda: max(building_a[p] + phase_sums(fleet)[p] for p in range(3)) <= 40.0,
                    15,
                    "the site back within its limit",
                )
                reacted_s = time.monotonic() - stepped_at
                counters = harness.control.counters
    finally:
        await fleet.stop()
    assert reacted_s < 5.0, reacted_s  # a meter read (1 s), a round, a verified write: well within the 20 s period
    assert counters["urgent"] >= 1
    assert counters["periods"] > periods


@pytest.mark.django_db(transaction=True)
async def test_a_stale_meter_falls_back_to_the_failsafe_shares(tmp_path: Path) -> None:
    fleet, site, _cps = await charging_site(count=2, limit_a=40.0)
    building_a = [5.0, 5.0, 5.0]
    try:
        async with site_meter(fleet, building_a) as meter:
            await use_meter(site, meter, meter_stale_s=2.0)
            async with running(tmp_path) as harness:
                await wait_for(
                    lambda: harness.statuses and harness.statuses[-1].draw_source == "meter", 25, "the meter read"
                )
                await meter.stop()  # the meter dies: connection refused from now on
                await wait_for(
                    lambda: (
                        harness.statuses[-1].state == "fallback"
                        and all(sim.behaviour.max_current_a == 19.0 for sim in fleet.charge_points)
                    ),
                    25,
                    "the fallback shares in the chargers",
                )
                status = harness.statuses[-1]
    finally:
        await fleet.stop()
    assert status.draw_source == "fallback"
    assert "meter" in status.reason and "stale" in status.reason
    # The failsafe arithmetic (docs/site-load-management.md): (40 A - 1 A margin - 0 A configured
    # base load) shared by two 3-phase chargers = 19.5 A, floored to whole amperes: 19 A each.
    assert [share.allocated_a for share in status.chargers] == [19.0, 19.0]
