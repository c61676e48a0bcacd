"""History, sessions and alerts end to end: simulated chargers → run_poller → the embedded Kafka →
run_consumer (both sink groups, the services runconsumer runs) → history rows, a charging session
with its energy, an alert raised and cleared, on the alerts topic too.

Ground truth comes from outside the consumer: what reached the Kafka topic (every record stored
exactly once, across a restart of the consumer in the middle) and the simulator's own energy
count for the session.
"""

import asyncio
import contextlib
import json
import math
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.db.models import Count

from gateway import services
from gateway.choices import AlertKind
from gateway.kafka.topics import alerts_topic, telemetry_topic
from gateway.models import Alert
from gateway.models.history import TelemetrySample
from gateway.models.sessions import ChargingSession
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.behaviour import Phase
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import make_charge_point
from tests.kafka_read import read_all
from tests.test_alerts import create_builtin_rules

pytestmark = pytest.mark.django_db(transaction=True)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
# Simulated seconds per real second: the scripted car's charge takes seconds, not a minute.
SPEEDUP = 5.0
SESSION_ENERGY_WH = 150.0  # what the scripted car needs: ~50 simulated seconds at 11 kW


@contextlib.asynccontextmanager
async def running(coroutine_factory, name: str) -> AsyncIterator[asyncio.Task]:
    """A service task (taking a stop event) that is stopped, and must end cleanly, when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(coroutine_factory(stop), name=name)
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def script_idle(fleet: SimulatorFleet) -> None:
    """Every simulated charger idle, with no car arriving and no fault by chance: the test scripts them."""
    for sim in fleet.charge_points:
        behaviour = sim.behaviour
        behaviour.mean_fault_interval_s = math.inf
        behaviour.phase, behaviour.vehicle = Phase.IDLE, None
        behaviour._next_arrival_s = math.inf  # no car but the scripted one


async def until(condition, timeout_s: float, what: str) -> None:
    """Await an async condition until it holds (the ORM's async API: the consumer's sync thread stays free)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def stored_per_charge_point() -> Counter:
    rows = TelemetrySample.objects.values("charge_point__slug").annotate(n=Count("*"))
    return Counter({row["charge_point__slug"]: row["n"] async for row in rows})


async def open_alerts(slug: str) -> int:
    return await Alert.objects.filter(charge_point_slug=slug, kind=AlertKind.FAULTED, cleared_at__isnull=True).acount()


async def cleared_alerts(slug: str) -> int:
    return await Alert.objects.filter(charge_point_slug=slug, kind=AlertKind.FAULTED, cleared_at__isnull=False).acount()


async def closed_sessions(slug: str) -> int:
    return await ChargingSession.objects.filter(charge_point_slug=slug, ended_at__isnull=False).acount()


async def test_the_chain_stores_history_once_derives_a_session_and_raises_and_clears_an_alert(
    kafka, site, generic_profile
) -> None:
    await sync_to_async(create_builtin_rules)()  # migration 0010's rows: a transactional test before flushed them
    fleet = SimulatorFleet(GENERIC, 2, base_port=0, seed=11, speedup=SPEEDUP)
    await fleet.start()
    try:
        script_idle(fleet)
        car_cp, fault_cp = fleet.charge_points
        for sim, slug in ((car_cp, "cp-car"), (fault_cp, "cp-fault")):
            await sync_to_async(make_charge_point)(site, generic_profile, slug, sim.port, unit_id=sim.unit_id)

        async with running(lambda stop: services.run_poller(stop, poller_id="e2e-history"), "poller"):
            # First consumer run: until every charge point is in the history.
            async with running(services.run_consumer, "consumer") as consumer:

                async def both_in_history() -> bool:
                    return consumer.done() or len(await stored_per_charge_point()) == 2

                await until(both_in_history, 90, "history of both charge points")
                assert not consumer.done(), consumer.exception()

                # A car charges and leaves: a session with the simulator's own energy count.
                car_cp.connect_vehicle(phases=3)
                car_cp.behaviour.vehicle.energy_needed_wh = SESSION_ENERGY_WH
                # A fault comes: one alert, raised.
                fault_cp.set_status("faulted", "F")
                await until(lambda: _equals(open_alerts("cp-fault"), 1), 30, "the fault alert")

            # The consumer restarts mid-stream (the poller keeps publishing): nothing lost, nothing twice.
            async with running(services.run_consumer, "consumer again") as consumer:
                fault_cp.clear_overrides()
                await until(lambda: _equals(closed_sessions("cp-car"), 1), 90, "the car's session to end")
                await until(lambda: _equals(cleared_alerts("cp-fault"), 1), 30, "the fault alert cleared")
                assert await open_alerts("cp-fault") == 0
                assert not consumer.done(), consumer.exception()
                simulated_session_wh = car_cp.behaviour.session_energy_wh
        # The poller has stopped and flushed: let the history group catch up with the whole topic.
        published = Counter(json.loads(m.value)["charge_point"] for m in await read_all(telemetry_topic()))
        async with running(services.run_consumer, "consumer to catch up"):
            await until(
                lambda: _equals(stored_per_charge_point(), published),
                60,
                f"history to hold the {sum(published.values())} records",
            )
    finally:
        await fleet.stop()

    # Every record in the topic is one history row: none lost, none twice (the restart redelivered).
    assert await stored_per_charge_point() == published
    # The session: its energy is the counter difference the simulator itself counted (the counter
    # only moves while the car charges, and the baseline is the record before the charge), to the
    # register's resolution: the generic map's meter is a uint32 in whole Wh.
    session = await ChargingSession.objects.aget(charge_point_slug="cp-car")
    assert session.ended_at is not None and session.ended_at > session.started_at
    assert session.energy_wh == pytest.approx(simulated_session_wh, abs=1.0)
    assert session.peak_power_w > 5_000  # a 3-phase car at 16..32 A
    # The alert: raised once, cleared once, on the topic in that order.
    alert = await Alert.objects.aget(charge_point_slug="cp-fault", kind=AlertKind.FAULTED)
    assert alert.cleared_at is not None
    events = [json.loads(m.value) for m in await read_all(alerts_topic())]
    mine = [(event["event"], event["id"]) for event in events if event["charge_point"] == "cp-fault"]
    assert mine == [("raised", str(alert.id)), ("cleared", str(alert.id))], events
    # The poller never stopped: a consumer that restarts (and finds the latest records as old as its
    # own downtime) must not call the charge points stale.
    assert not await Alert.objects.filter(kind=AlertKind.STALE).aexists()


async def _equals(value, expected) -> bool:
    return await value == expected
