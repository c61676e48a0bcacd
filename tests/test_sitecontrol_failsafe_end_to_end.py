"""Site load management end to end when something dies: the poller (the chargers' own failsafes)
and the site meter (the chain: tests/site_chain.py)."""

import asyncio
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.choices import AlertKind
from gateway.models import Alert, SiteSample
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from tests.processes import Service, manage, process_env, wait_until
from tests.site_chain import (
    PERIOD_S,
    all_charging,
    chain,
    settle,
    site_fleet,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(320)]


@dataclass(frozen=True)
class Vendor:
    slug: str
    unit_id: int


VENDORS = [
    Vendor("keba-p30", 255),
    Vendor("webasto-next", 255),
    Vendor("vestel-evc04", 255),
    Vendor("abb-terra-ac", 1),
    Vendor("schneider-evlink-pro-ac", 255),
]


def test_a_killed_poller_leaves_each_charger_on_its_failsafe_current_within_its_timeout(
    tmp_path: Path, kafka: dict
) -> None:
    """runpoller controls one charger of each vendor that declares a failsafe; kill -9 it. Each
    falls back by itself within its timeout, to the share worked out by hand: room 63 − 1 − 10 =
    52 A, 52 / 5 chargers = 10.4 → 10 A each."""
    profiles = [read_spec_file(SHIPPED_DIR / f"{vendor.slug}.json") for vendor in VENDORS]
    fleet = SimulatorFleet(profiles, len(profiles), base_port=0, seed=3, scripted=True)
    env = process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_COMMANDS_TOPIC=kafka["COMMANDS_TOPIC"],
        EVDASH_COMMAND_RESULTS_TOPIC=kafka["COMMAND_RESULTS_TOPIC"],
        EVDASH_SITE_STATUS_TOPIC=kafka["SITE_STATUS_TOPIC"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        EVDASH_RELOAD_INTERVAL_S="1",
        EVDASH_MODBUS_TIMEOUT_S="1",
    )
    with fleet.run_in_thread():
        for sim in fleet.charge_points:
            sim.connect_vehicle(3, max_current_a=32.0, energy_needed_wh=math.inf, stay_s=math.inf, prepare_s=0.5)
        manage(["migrate", "-v", "0"], env)
        chargers = ", ".join(
            f"('{v.slug}', {sim.port}, {v.unit_id})" for v, sim in zip(VENDORS, fleet.charge_points, strict=True)
        )
        # The vendors' pacing relaxed (KEBA asks 5 s between writes): the test is about the failsafe.
        manage(
            [
                "shell",
                "-c",
                "from gateway.models import *; "
                "s = Site.objects.create(slug='depot', name='Depot', limit_a=63, margin_a=1, base_load_a=10, "
                "failsafe_timeout_s=20, control_period_s=2); "
                f"[ChargePoint.objects.create(slug=slug, name=slug, site=s, host='127.0.0.1', port=port, "
                f"unit_id=unit, profile=DeviceProfile.objects.get(slug=slug), poll_interval_ms=1000, "
                f"request_gap_ms=0, write_gap_ms=0) for slug, port, unit in [{chargers}]]",
            ],
            env,
        )
        poller = Service("runpoller", env, tmp_path / "runpoller.log")
        try:
            # Schneider has no timeout register: its lifebit watchdog's own (20 s in the simulator).
            wait_until(
                lambda: all(
                    sim.failsafe_current_a == 10.0 and sim.failsafe_timeout_s == 20.0 for sim in fleet.charge_points
                ),
                90,
                "every charger given its failsafe current of 10 A and a timeout of 20 s",
                poller,
            )
            timeouts = {sim.profile.slug: sim.failsafe_timeout_s for sim in fleet.charge_points}
            assert all(not sim.failsafe_active for sim in fleet.charge_points)
            poller.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            poller.process.wait(10)
        finally:
            poller.kill()
        assert timeouts == dict.fromkeys(timeouts, 20.0), timeouts
        fell_back_at: dict[str, float] = {}

        def all_fell_back() -> bool:
            for sim in fleet.charge_points:
                if sim.failsafe_active and sim.profile.slug not in fell_back_at:
                    fell_back_at[sim.profile.slug] = time.monotonic() - killed_at
            return len(fell_back_at) == len(VENDORS)

        wait_until(all_fell_back, 20.0 + 10.0, "every charger on its failsafe current")
        assert all(seconds <= 20.0 + 3.0 for seconds in fell_back_at.values()), fell_back_at
        assert [sim.behaviour.max_current_a for sim in fleet.charge_points] == [10.0] * len(VENDORS)


async def test_a_stale_meter_falls_back_to_the_failsafe_shares_with_one_alert(kafka: dict) -> None:
    """The meter stops answering: within its stale time every charger gets its failsafe share and
    one alert is raised; the meter answers again: the alert clears and sharing resumes.

    Failsafe shares by hand (base load 10 A, margin 1 A): room 52 A per phase; L2 carries 8
    chargers: 6.5 A; L1 and L3 7: 7.4 A. Three-phase chargers take their smallest phase, 6.5 → 6 A,
    the L2 ones 6 A, the L1 and L3 ones 7.4 → 7 A."""
    fleet = site_fleet()
    async with chain(fleet, consumer=True, meter_stale_s=6.0) as watch:
        await all_charging(watch, "every car charging before the meter dies")
        await asyncio.sleep(PERIOD_S)
        fleet.meter.set_stale(True)
        stale_at = time.monotonic()
        # Stale after 6 s: the controller says so in its status (stored by the consumer), and its
        # rounds from then on give the failsafe shares.
        deadline = time.monotonic() + 40
        while not await SiteSample.objects.filter(site_slug="car-park", state="fallback").aexists():
            assert time.monotonic() < deadline, "no fallback status within 40 s of the meter going stale"
            await asyncio.sleep(0.2)
        fallback = await settle(watch, "on the fallback", min_s=PERIOD_S)
        fell_back_s = next(s.at for s in watch.samples if s.at > stale_at and s.limits_a == fallback) - stale_at
        assert fallback == [6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 7.0, 6.0, 7.0, 6.0], fallback
        assert fell_back_s <= 6.0 + PERIOD_S + 3.0, fell_back_s
        deadline = time.monotonic() + 30
        while not await Alert.objects.filter(kind=AlertKind.SITE_METER_STALE).aexists():
            assert time.monotonic() < deadline, "no meter-stale alert within 30 s"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2 * PERIOD_S)  # more fallback statuses: still one alert
        fleet.meter.set_stale(False)
        deadline = time.monotonic() + 40
        while await Alert.objects.filter(kind=AlertKind.SITE_METER_STALE, cleared_at=None).aexists():
            assert time.monotonic() < deadline, "the meter-stale alert did not clear within 40 s"
            await asyncio.sleep(0.2)
    alerts = [a async for a in Alert.objects.filter(kind=AlertKind.SITE_METER_STALE)]
    assert len(alerts) == 1
    assert (alerts[0].charge_point_slug, alerts[0].site_slug) == ("car-park-meter", "car-park")
