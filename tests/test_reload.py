"""Live reload judged by what the poller does: disabled, moved and re-profiled charge points, broken profiles."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from asgiref.sync import sync_to_async

from gateway.modbus.poller import Poller
from gateway.models import ChargePoint, DeviceProfile, Register
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import Collected, make_charge_point, stored_profile, wait_for
from tests.faults import CountingProxy

pytestmark = pytest.mark.django_db(transaction=True)
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
RELOAD_INTERVAL_S = 0.5
POLL_INTERVAL_S = 0.25


@pytest.fixture
def fast_reload(settings) -> None:
    settings.EVDASH = settings.EVDASH | {
        "RELOAD_INTERVAL_S": RELOAD_INTERVAL_S,
        "MODBUS_TIMEOUT_S": 1.0,
        "RECONNECT_BACKOFF_MAX_S": 2.0,
    }


class RunningPoller:
    """A Poller running in the test's loop, stopped (and awaited) on exit."""

    def __init__(self) -> None:
        self.collected = Collected()
        self.poller = Poller(self.collected)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "RunningPoller":
        self._task = asyncio.create_task(self.poller.run(self._stop))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)


@pytest.fixture
async def chargers() -> AsyncIterator[SimulatorFleet]:
    """Three simulated chargers told apart by their power reading (1111 W, 2222 W, 3333 W)."""
    async with SimulatorFleet(GENERIC, 3, base_port=0, seed=21) as fleet:
        for sim, power_w in zip(fleet.charge_points, (1111, 2222, 3333), strict=True):
            sim.set_status("charging")
            sim.set_value("power_w", power_w)
        yield fleet


SCHEDULING_SLACK_S = 0.4


async def test_a_disabled_charge_point_goes_quiet_within_the_reload_interval_plus_one_poll(
    site, generic_profile, fast_reload, chargers, settings
) -> None:
    # Long enough against the poll interval that a reload running late shows as late records.
    reload_s = 1.0
    settings.EVDASH = settings.EVDASH | {"RELOAD_INTERVAL_S": reload_s}
    first, second, _ = chargers.charge_points
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", first.port)
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-b", second.port)
    async with RunningPoller() as running:
        collected = running.collected
        await wait_for(lambda: len(collected.of("cp-a")) >= 3, what="cp-a polled")
        # The worst moment: just after a reload read the database, a whole interval before the next.
        reloads = running.poller.reloads
        await wait_for(lambda: running.poller.reloads > reloads, timeout_s=3, what="a reload")
        disabled_at = time.monotonic()
        await ChargePoint.objects.filter(slug="cp-a").aupdate(enabled=False)
        # The documented bound, plus a little for the reload's own database read on a loaded machine
        # (a reload running at half speed would still land records well past it).
        quiet_by = disabled_at + reload_s + POLL_INTERVAL_S + SCHEDULING_SLACK_S
        # Watch well past the deadline: cp-b's records prove time (and polling) went on.
        await wait_for(
            lambda: sum(t > quiet_by for t in collected.times_of("cp-b")) >= 6, what="cp-b polled past the deadline"
        )
    late = [t - disabled_at for t in collected.times_of("cp-a") if t > quiet_by]
    assert late == [], f"cp-a still polled {late} s after it was disabled"
    assert collected.times_of("cp-a")[-1] > disabled_at - 2 * POLL_INTERVAL_S  # it was polling up to the edit


async def test_an_edited_charge_point_is_polled_at_its_new_address(
    site, generic_profile, fast_reload, chargers
) -> None:
    first, second, _ = chargers.charge_points
    await sync_to_async(make_charge_point)(site, generic_profile, "cp", first.port)
    async with RunningPoller() as running:
        collected = running.collected
        await wait_for(lambda: len(collected.of("cp")) >= 2, what="cp polled at its first address")
        moved_at = time.monotonic()
        await ChargePoint.objects.filter(slug="cp").aupdate(port=second.port)
        await wait_for(
            lambda: collected.of("cp")[-1]["values"]["power_w"] == 2222, timeout_s=5, what="cp read from the new port"
        )
        switched_at, polled = time.monotonic(), len(collected.of("cp"))
        await wait_for(lambda: len(collected.of("cp")) >= polled + 4, what="more polls at the new address")
    powers = [r["values"]["power_w"] for r in collected.of("cp")]
    assert powers[0] == 1111
    switch = powers.index(2222)
    assert set(powers[:switch]) == {1111} and set(powers[switch:]) == {2222}, powers
    assert switched_at - moved_at <= RELOAD_INTERVAL_S + POLL_INTERVAL_S + 0.5


async def test_a_profile_edit_changes_the_records(site, generic_profile, fast_reload, chargers) -> None:
    first, *_ = chargers.charge_points
    await sync_to_async(make_charge_point)(site, generic_profile, "cp", first.port)
    async with RunningPoller() as running:
        collected = running.collected
        await wait_for(lambda: len(collected.of("cp")) >= 2, what="cp polled")
        # The profile author finds the power register counts in tens of watts.
        await Register.objects.filter(profile=generic_profile, name="power").aupdate(scale=10)
        await wait_for(
            lambda: collected.of("cp")[-1]["values"]["power_w"] != 1111, timeout_s=5, what="the new scale applied"
        )
    powers = [r["values"]["power_w"] for r in collected.of("cp")]
    switch = powers.index(11110)
    assert set(powers[:switch]) == {1111} and set(powers[switch:]) == {11110}, powers


async def test_a_reload_never_opens_a_second_connection_to_the_same_charger(
    site, generic_profile, fast_reload, chargers
) -> None:
    first, *_ = chargers.charge_points
    edits = 3
    # Each response held back 300 ms, polled every 100 ms: a poll is always in flight when an edit lands.
    async with CountingProxy(first.port, delay_s=0.3) as proxy:
        await sync_to_async(make_charge_point)(site, generic_profile, "cp", proxy.port, poll_interval_ms=100)
        async with RunningPoller() as running:
            collected = running.collected
            await wait_for(lambda: collected.of("cp"), what="cp polled")
            for edit in range(1, edits + 1):
                await ChargePoint.objects.filter(slug="cp").aupdate(poll_interval_ms=100 + edit)
                await wait_for(
                    lambda edit=edit: running.poller.tasks["cp"][0].interval_ms == 100 + edit,
                    timeout_s=3,
                    what=f"edit {edit} picked up",
                )
                # Counted once the edit is picked up: the old loop may still publish its poll in
                # flight, so two more records mean the new loop has connected and polled.
                polled = len(collected.of("cp"))
                await wait_for(
                    lambda polled=polled: len(collected.of("cp")) >= polled + 2, timeout_s=5, what="polled after edit"
                )
        assert proxy.connections == edits + 1  # each edit reconnected...
        assert proxy.max_open == 1  # ...but only once the previous connection was closed
    assert all(r["quality"] == "good" for r in collected.of("cp"))


async def test_a_broken_profile_does_not_freeze_reloads_for_the_others(
    site, generic_profile, fast_reload, chargers, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.modbus.poller")
    first, second, third = chargers.charge_points
    # An unknown key in a read block, stored before the profile form refused it.
    broken = await sync_to_async(stored_profile)(replace(GENERIC, slug="broken"))
    await DeviceProfile.objects.filter(pk=broken.pk).aupdate(
        read_blocks=[{"function": "holding", "address": 0, "count": 4, "bogus": 1}]
    )
    await sync_to_async(make_charge_point)(site, broken, "cp-broken", first.port)
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", second.port)
    async with RunningPoller() as running:
        collected, poller = running.collected, running.poller
        await wait_for(lambda: collected.of("cp-broken") and collected.of("cp-a"), what="first reload")
        reloads = poller.reloads
        # Other charge points still follow the database: a new one starts, a disabled one stops.
        await sync_to_async(make_charge_point)(site, generic_profile, "cp-b", third.port)
        await wait_for(lambda: collected.of("cp-b"), timeout_s=3, what="a new charge point polled")
        await ChargePoint.objects.filter(slug="cp-a").aupdate(enabled=False)
        await wait_for(lambda: "cp-a" not in poller.tasks, timeout_s=3, what="a disabled charge point stopped")
        await wait_for(lambda: poller.reloads >= reloads + 3, timeout_s=5, what="three more reloads")
        reported = list(collected.of("cp-broken"))
        # Repairing the profile brings its charge point back.
        await DeviceProfile.objects.filter(pk=broken.pk).aupdate(read_blocks=[])
        await wait_for(
            lambda: collected.of("cp-broken")[-1]["quality"] == "good", timeout_s=3, what="the repaired profile polled"
        )
    # Reported once (not at every reload), on the tile and in the log, with the reason.
    [record] = reported
    assert record["status"] == "offline" and record["quality"] == "bad" and record["profile"] == "broken"
    assert record["error"].startswith("profile broken cannot be loaded: ")
    assert "bogus" in record["error"]  # the reason names the offending key
    logged = [r for r in caplog.records if r.getMessage().startswith("not polling cp-broken")]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "bogus" in logged[0].getMessage()


async def test_runpoller_once_reports_a_broken_profile_beside_the_polled_charge_points(
    site, generic_profile, fast_reload, chargers
) -> None:
    first, second, _ = chargers.charge_points
    broken = await sync_to_async(stored_profile)(replace(GENERIC, slug="broken"))
    await DeviceProfile.objects.filter(pk=broken.pk).aupdate(heartbeats=[{"register": "power", "every": 5}])
    await sync_to_async(make_charge_point)(site, broken, "cp-broken", first.port)
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-good", second.port)
    collected = Collected()
    records = await Poller(collected).poll_all_once()
    assert records == collected.records
    by_slug = {r["charge_point"]: r for r in records}
    assert sorted(by_slug) == ["cp-broken", "cp-good"]
    assert by_slug["cp-good"]["quality"] == "good" and by_slug["cp-good"]["values"]["power_w"] == 2222
    assert by_slug["cp-broken"]["quality"] == "bad" and "every" in by_slug["cp-broken"]["error"]


def test_a_reload_loads_and_compiles_each_distinct_profile_once(site, generic_profile, monkeypatch) -> None:
    from gateway.modbus import poller
    from gateway.profiles import store
    from tests.conftest import shipped_profile

    alfen = shipped_profile("alfen-eve")
    for index in range(30):
        make_charge_point(site, alfen if index % 3 == 0 else generic_profile, f"cp-{index}", 21_000 + index)
    loads, compiles = [], []
    load_spec, plan_profile = store.load_spec, poller.plan_profile
    monkeypatch.setattr(store, "load_spec", lambda profile: loads.append(profile.slug) or load_spec(profile))
    monkeypatch.setattr(poller, "plan_profile", lambda spec: compiles.append(spec.slug) or plan_profile(spec))
    known: dict = {}
    configs = poller.load_fleet(known=known).configs
    assert len(configs) == 30
    assert sorted(loads) == sorted(compiles) == ["alfen-eve", "generic-ev-charger"]
    # The next reload finds the profiles unchanged: same spec and plan objects, nothing recompiled,
    # so the configs compare equal to the running ones at the cost of an identity check.
    again = poller.load_fleet(known=known).configs
    assert again == configs and all(
        a.plan is c.plan and a.profile is c.profile for a, c in zip(again, configs, strict=True)
    )
    assert len(compiles) == 2 and len(loads) == 4
    # Every charge point of a profile shares its spec and its compiled plan.
    by_profile = {}
    for config in configs:
        by_profile.setdefault(config.profile.slug, set()).add((id(config.profile), id(config.plan)))
    assert all(len(shared) == 1 for shared in by_profile.values()), by_profile
