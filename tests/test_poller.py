"""The poll loop against real simulator Modbus servers: decode, dead devices, isolation, heartbeats, crashes."""

import asyncio
import itertools
import json
import logging
import time
from dataclasses import replace
from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from gateway.modbus.poller import (
    CRASH_RESTART_FIRST_S,
    SLOT_GRID_S,
    STAGGER_MAX_S,
    ChargePointPoller,
    Poller,
    PollStats,
    load_configs,
)
from gateway.models import ChargePoint, DeviceProfile
from gateway.profiles.spec import Heartbeat
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import Collected, free_port, make_charge_point, stored_profile, wait_for
from tests.faults import HungCharger, silent_charger

pytestmark = pytest.mark.django_db(transaction=True)
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")


async def test_values_set_on_the_charger_are_decoded(site, generic_profile) -> None:
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=1) as fleet:
        sim = fleet.charge_points[0]
        sim.set_status("charging")
        for role, value in {
            "power_w": 11_085,
            "current_l1_a": 16.05,
            "current_l2_a": 15.98,
            "current_l3_a": 16.0,
            "voltage_l1_v": 231.4,
            "energy_total_wh": 4_294_000_000,
            "session_energy_wh": 12_345,
            "temperature_c": -3.5,
            "current_limit_a": 16.0,
            "error_code": 0,
        }.items():
            sim.set_value(role, value)
        await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", sim.port)
        [config] = await sync_to_async(load_configs)()
        collected = Collected()
        record = await ChargePointPoller(config, collected).poll_once()

    assert record["status"] == "charging" and record["iec61851_state"] == "C"
    assert record["quality"] == "good", record["error"]
    values = record["values"]
    assert values["power_w"] == 11_085
    assert values["current_l1_a"] == 16.05 and values["current_l2_a"] == 15.98
    assert values["voltage_l1_v"] == 231.4
    assert values["energy_total_wh"] == 4_294_000_000
    assert values["temperature_c"] == -3.5
    assert record["extra"]["serial_number"]  # slow group (identity) read on the first poll
    assert collected.records == [record]


MODBUS_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.25
# The largest gap allowed between a live charger's records while another one hangs: its own
# interval plus scheduling jitter, far below the hung read's timeout.
LIVE_MAX_GAP_S = 2 * POLL_INTERVAL_S


def max_gap_during(times: list[float], start: float, end: float) -> float:
    """The largest gap between consecutive arrivals that overlaps [start, end]."""
    gaps = [b - a for a, b in itertools.pairwise(times) if b >= start and a <= end]
    assert len(gaps) >= (end - start) / POLL_INTERVAL_S - 1, "too few live records in the window"
    return max(gaps)


async def test_hung_silent_and_dead_charge_points_do_not_delay_the_live_ones(
    site, generic_profile, settings, capsys
) -> None:
    settings.EVDASH = settings.EVDASH | {"MODBUS_TIMEOUT_S": MODBUS_TIMEOUT_S, "RELOAD_INTERVAL_S": 0.5}
    # The pymodbus request timeout is MODBUS_TIMEOUT_S; our own bound around it is one second more.
    read_bound_s = MODBUS_TIMEOUT_S + 1 + 0.5
    async with HungCharger() as hung, SimulatorFleet(GENERIC, 2, base_port=0, seed=2) as fleet:
        with silent_charger() as silent_port:
            for index, sim in enumerate(fleet.charge_points):
                await sync_to_async(make_charge_point)(site, generic_profile, f"live-{index}", sim.port)
            await sync_to_async(make_charge_point)(site, generic_profile, "dead", free_port())
            await sync_to_async(make_charge_point)(site, generic_profile, "hung", hung.port)
            await sync_to_async(make_charge_point)(site, generic_profile, "silent", silent_port)
            collected = Collected()
            poller, stop = Poller(collected), asyncio.Event()
            started = time.monotonic()
            task = asyncio.create_task(poller.run(stop))
            try:
                await wait_for(lambda: hung.request_at, timeout_s=5, what="a read sent to the hung charger")
                await wait_for(lambda: collected.of("hung"), timeout_s=read_bound_s, what="the hung read timing out")
                await wait_for(lambda: collected.of("silent"), timeout_s=read_bound_s, what="the silent connect")
                # Enough live records after both windows to see the gaps that span their ends.
                settled = time.monotonic()
                await wait_for(
                    lambda: all(collected.times_of(s)[-1] > settled + POLL_INTERVAL_S for s in ("live-0", "live-1")),
                    timeout_s=3,
                    what="live records after the windows",
                )
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
    hung_window = (hung.request_at[0], collected.times_of("hung")[0])
    silent_window = (started, collected.times_of("silent")[0])
    gaps = {
        (slug, what): max_gap_during(collected.times_of(slug), *window)
        for slug in ("live-0", "live-1")
        for what, window in (("hung", hung_window), ("silent", silent_window))
    }
    with capsys.disabled():
        print("\nlargest live gaps (s):", {f"{s} during {w}": round(g, 3) for (s, w), g in gaps.items()})
    assert max(gaps.values()) <= LIVE_MAX_GAP_S, gaps
    # The windows are real: the read stayed unanswered, the connect hung instead of being refused
    # (the client's timer starts a moment before the request reaches the charger: 10 % slack).
    assert 0.9 * MODBUS_TIMEOUT_S <= hung_window[1] - hung_window[0] <= read_bound_s
    assert 0.9 * MODBUS_TIMEOUT_S <= silent_window[1] - silent_window[0] <= read_bound_s
    assert collected.times_of("dead")[0] - started < MODBUS_TIMEOUT_S / 2  # refused at once
    for slug, reason in (("dead", "cannot connect"), ("hung", "127.0.0.1"), ("silent", "cannot connect")):
        offline = collected.of(slug)[0]
        assert offline["status"] == "offline" and offline["quality"] == "bad"
        assert reason in offline["error"] and str(offline["error"]).count("127.0.0.1") == 1
    assert all(r["status"] != "offline" for s in ("live-0", "live-1") for r in collected.of(s))
    assert [r["seq"] for r in collected.of("live-0")] == list(range(1, len(collected.of("live-0")) + 1))


async def test_unreachable_charge_point_is_retried_with_backoff(site, generic_profile, settings) -> None:
    settings.EVDASH = settings.EVDASH | {"RECONNECT_BACKOFF_MAX_S": 2.0}
    await sync_to_async(make_charge_point)(site, generic_profile, "dead", free_port(), poll_interval_ms=250)
    [config] = await sync_to_async(load_configs)()
    collected = Collected()
    poller, stop = ChargePointPoller(config, collected), asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        await wait_for(lambda: len(collected.records) >= 4, timeout_s=8, what="four connection attempts")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    gaps = [b - a for a, b in zip(collected.arrived_at, collected.arrived_at[1:], strict=False)][:3]
    # 2 x 250 ms, doubling, capped at RECONNECT_BACKOFF_MAX_S: not hammered every 250 ms.
    for gap, delay_s in zip(gaps, (0.5, 1.0, 2.0), strict=True):
        assert delay_s <= gap <= delay_s + 0.5, gaps
    assert all(r["status"] == "offline" for r in collected.records)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_poll_schedule_keeps_its_rate_skips_missed_slots_and_backs_off(site, generic_profile, settings) -> None:
    settings.EVDASH = settings.EVDASH | {"RECONNECT_BACKOFF_MAX_S": 3.0}
    await sync_to_async(make_charge_point)(site, generic_profile, "cp", free_port(), poll_interval_ms=1000)
    [config] = await sync_to_async(load_configs)()
    clock = FakeClock()
    poller = ChargePointPoller(config, Collected(), clock=clock)
    clock.now = 1000.3  # a poll that took 300 ms: the next one keeps the 1 s rate
    assert poller._next_poll_at(1000.0, 1.0) == pytest.approx(1001.0)
    clock.now = 1002.5  # a poll that overran two slots: they are skipped, not bunched up
    assert poller._next_poll_at(1000.0, 1.0) == pytest.approx(1003.0)
    poller.failures = 1  # unreachable: 2 x interval, doubling, capped at RECONNECT_BACKOFF_MAX_S
    delays = []
    for _ in range(4):
        delays.append(poller._next_poll_at(clock.now, 1.0) - clock.now)
    assert delays == pytest.approx([2.0, 3.0, 3.0, 3.0])


async def test_admin_changes_are_picked_up_without_restart(site, generic_profile, kafka) -> None:
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=3) as fleet:
        first, second = fleet.charge_points
        await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", first.port)
        collected = Collected()
        poller, stop = Poller(collected), asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(lambda: collected.of("cp-a"), what="cp-a polled")
            await sync_to_async(make_charge_point)(site, generic_profile, "cp-b", second.port)
            await wait_for(lambda: collected.of("cp-b"), what="a new charge point polled after reload")
            await ChargePoint.objects.filter(slug="cp-a").aupdate(enabled=False)
            await wait_for(lambda: "cp-a" not in poller.tasks, what="a disabled charge point dropped")
            await ChargePoint.objects.filter(slug="cp-b").aupdate(poll_interval_ms=1000)
            await wait_for(
                lambda: "cp-b" in poller.tasks and poller.tasks["cp-b"][0].interval_ms == 1000,
                what="an edited charge point restarted with its new interval",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert not poller.tasks


def test_runpoller_once_prints_one_record_per_charge_point(site, generic_profile, kafka) -> None:
    with SimulatorFleet(GENERIC, 2, base_port=0, seed=4).run_in_thread() as fleet:
        for index, sim in enumerate(fleet.charge_points):
            make_charge_point(site, generic_profile, f"cp-{index}", sim.port)
        out = StringIO()
        call_command("runpoller", "--once", stdout=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(r["charge_point"] for r in records) == ["cp-0", "cp-1"]
    assert all(r["quality"] == "good" for r in records)


HEARTBEATS_WATCHED = 4
HEARTBEAT_TRANSIT_SLACK = timedelta(milliseconds=10)


async def test_heartbeats_keep_their_own_cadence_between_polls(site) -> None:
    from tests.conftest import shipped_profile

    # Schneider's lifebit must be written every 2 s, however slowly the charge point is polled.
    profile = await sync_to_async(shipped_profile)("schneider-evlink-pro-ac")
    spec = read_spec_file(SHIPPED_DIR / "schneider-evlink-pro-ac.json")
    [lifebit] = spec.heartbeats
    async with SimulatorFleet(spec, 1, base_port=0, seed=6) as fleet:
        sim = fleet.charge_points[0]
        await sync_to_async(make_charge_point)(
            site, profile, "schneider", sim.port, unit_id=spec.default_unit_id, poll_interval_ms=60_000
        )
        [config] = await sync_to_async(load_configs)()
        collected = Collected()
        poller, stop = ChargePointPoller(config, collected), asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(
                lambda: sim.heartbeats_received.get(lifebit.register, 0) >= HEARTBEATS_WATCHED,
                timeout_s=HEARTBEATS_WATCHED * (lifebit.interval_s + 1),
                what=f"{HEARTBEATS_WATCHED} lifebit writes",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert len(collected.records) == 1  # one poll in all that time: the heartbeats ran on their own timer
    arrivals = [w.at for w in sim.last_writes if w.register == lifebit.register]
    assert len(arrivals) == poller.heartbeats_sent >= HEARTBEATS_WATCHED
    spacing = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    interval = timedelta(seconds=lifebit.interval_s)
    # Never sooner than declared (less the jitter of two loopback writes), and never late enough
    # for the charger's watchdog to notice (generously: one second).
    assert all(interval - HEARTBEAT_TRANSIT_SLACK <= gap <= interval + timedelta(seconds=1) for gap in spacing), spacing


async def test_heartbeat_writes_back_the_value_it_read(site) -> None:
    from tests.conftest import shipped_profile

    # Alfen: the max-current setpoint is only valid for a while: the poller rewrites what it reads.
    profile = await sync_to_async(shipped_profile)("alfen-eve")
    spec = read_spec_file(SHIPPED_DIR / "alfen-eve.json")
    [setpoint] = spec.heartbeats
    async with SimulatorFleet(spec, 1, base_port=0, seed=6) as fleet:
        sim = fleet.charge_points[0]
        sim.set_value(setpoint.value_from, 13.5)
        await sync_to_async(make_charge_point)(site, profile, "alfen", sim.port, unit_id=spec.default_unit_id)
        [config] = await sync_to_async(load_configs)()
        await ChargePointPoller(config, Collected()).poll_once()
        writes = [w for w in sim.last_writes if w.register == setpoint.register]
    assert writes and writes[-1].value == 13.5


async def test_a_heartbeat_value_outside_the_write_range_never_reaches_the_wire(site, caplog) -> None:
    from tests.conftest import shipped_profile

    # Alfen's setpoint takes 0 or 6..32 A (alfen-eve.json): a charger reporting 40 A must not get
    # 40 A written back by the heartbeat; the write is refused before it is encoded, and logged.
    profile = await sync_to_async(shipped_profile)("alfen-eve")
    spec = read_spec_file(SHIPPED_DIR / "alfen-eve.json")
    [setpoint] = spec.heartbeats
    register = spec.register(setpoint.register)
    assert register.write_max == 32
    async with SimulatorFleet(spec, 1, base_port=0, seed=6) as fleet:
        sim = fleet.charge_points[0]
        sim.set_value(setpoint.value_from, 40.0)
        await sync_to_async(make_charge_point)(site, profile, "alfen", sim.port, unit_id=spec.default_unit_id)
        [config] = await sync_to_async(load_configs)()
        poller = ChargePointPoller(config, Collected())
        record = await poller.poll_once()
        writes = [r for r in sim.requests_received if r.write]
    assert record["extra"][setpoint.value_from] == 40.0  # read, then refused as a write
    assert writes == []
    assert poller.heartbeats_sent == 0
    assert f"heartbeat {register.name} failed" in caplog.text and "above the maximum" in caplog.text


async def test_a_crashing_charge_point_loop_is_reported_at_once_and_restarted_with_backoff(
    site, generic_profile, settings, caplog
) -> None:
    settings.EVDASH = settings.EVDASH | {"RECONNECT_BACKOFF_MAX_S": 2.0, "RELOAD_INTERVAL_S": 0.5}
    caplog.set_level(logging.INFO, logger="gateway.modbus.poller")
    # A heartbeat naming a register the profile lacks (stored before the form refused it): the
    # loop raises KeyError on its first poll.
    crashy = await sync_to_async(stored_profile)(
        replace(GENERIC, slug="crashy", heartbeats=(Heartbeat("no_such_register", 1.0, value=1),))
    )
    generic = generic_profile
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=8) as fleet:
        await sync_to_async(make_charge_point)(site, crashy, "crashy", fleet.charge_points[0].port)
        await sync_to_async(make_charge_point)(site, generic, "healthy", fleet.charge_points[1].port)
        collected = Collected()
        poller, stop = Poller(collected), asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(lambda: collected.of("crashy"), timeout_s=5, what="the crash reported")
            # Logged at once, with the traceback, when the tile learns of it.
            [crash_log] = [r for r in caplog.records if "poll loop crashed" in r.getMessage()]
            assert crash_log.levelno == logging.ERROR and crash_log.exc_info[0] is KeyError
            await wait_for(lambda: len(collected.of("crashy")) >= 3, timeout_s=8, what="two restarts")
            healthy_during = len(collected.of("healthy"))
            # Fixing the profile takes effect at the next reload.
            await DeviceProfile.objects.filter(pk=crashy.pk).aupdate(heartbeats=[])
            await wait_for(
                lambda: collected.of("crashy")[-1]["quality"] == "good", timeout_s=5, what="the fixed profile polled"
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    crashes = [r for r in collected.of("crashy") if r["quality"] == "bad"]
    first = crashes[0]
    assert first["status"] == "offline"
    assert (
        first["error"] == f"poller crashed (KeyError: 'no_such_register'); restarting in {CRASH_RESTART_FIRST_S:.1f} s"
    )
    assert "restarting in 2.0 s" in crashes[1]["error"]
    times = collected.times_of("crashy")
    assert times[1] - times[0] >= CRASH_RESTART_FIRST_S and times[2] - times[1] >= 2.0  # backoff, not a spin
    seqs = [r["seq"] for r in collected.of("crashy")]
    assert seqs == list(range(1, len(seqs) + 1))  # the restarted loop continues the sequence
    assert healthy_during >= 8  # the healthy charge point kept polling at 250 ms meanwhile


async def test_the_poller_logs_its_stats_so_operators_see_it_keeps_up(site, generic_profile, settings, caplog) -> None:
    settings.EVDASH = settings.EVDASH | {"POLLER_STATS_INTERVAL_S": 0.5}
    caplog.set_level(logging.INFO, logger="gateway.modbus.poller")
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=9) as fleet:
        await sync_to_async(make_charge_point)(site, generic_profile, "cp", fleet.charge_points[0].port)
        collected = Collected()
        poller, stop = Poller(collected), asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(
                lambda: (
                    sum("records=" in r.getMessage() and "records=0 " not in r.getMessage() for r in caplog.records)
                    >= 2
                ),
                timeout_s=10,
                what="two stats lines with records",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("poller stats:")]
    fields = dict(item.split("=") for item in lines[-1].removeprefix("poller stats: ").split())
    assert set(fields) == {"charge_points", "records", "lateness_p50_ms", "lateness_p99_ms"}
    assert fields["charge_points"] == "1"
    # 250 ms polls over a 0.5 s period, each counted once (periods do not overlap).
    assert 1 <= int(fields["records"]) <= 4
    assert 0 <= float(fields["lateness_p50_ms"]) <= float(fields["lateness_p99_ms"])
    assert sum(int(dict(i.split("=") for i in line.split()[2:])["records"]) for line in lines) <= len(collected.records)


def test_stats_percentiles_are_nearest_rank_and_each_period_starts_afresh() -> None:
    stats = PollStats()
    for ms in range(1, 101):
        stats.note_lateness(ms / 1000)
    stats.records = 100
    assert stats.take_line(7) == "poller stats: charge_points=7 records=100 lateness_p50_ms=50.0 lateness_p99_ms=99.0"
    assert stats.take_line(7) == "poller stats: charge_points=7 records=0 lateness_p50_ms=0.0 lateness_p99_ms=0.0"


async def test_a_fleets_polls_are_spread_over_the_interval_each_in_a_stable_slot(site, generic_profile) -> None:
    for index in range(200):
        await sync_to_async(make_charge_point)(site, generic_profile, f"cp-{index}", 20_000 + index)
    await ChargePoint.objects.filter(slug="cp-0").aupdate(poll_interval_ms=60_000)
    configs = [replace(config, interval_ms=1000) for config in await sync_to_async(load_configs)()]
    clock = FakeClock()
    firsts = [ChargePointPoller(config, Collected(), clock=clock).first_poll_at(clock.now) for config in configs]
    offsets = sorted(first - clock.now for first in firsts)
    assert all(0 <= offset < 1.0 for offset in offsets)
    # On the slot grid: the charge points of one slot wake together (one event-loop turn).
    assert all(abs(f / SLOT_GRID_S - round(f / SLOT_GRID_S)) < 1e-6 for f in firsts)
    # Evenly spread: each tenth of the interval holds about a tenth of the fleet.
    tenths = [sum(k / 10 <= offset < (k + 1) / 10 for offset in offsets) for k in range(10)]
    assert min(tenths) >= 8 and max(tenths) <= 35, tenths
    # A restart later keeps the slot: the same phase within the interval.
    clock.now += 123.4
    again = [ChargePointPoller(config, Collected(), clock=clock).first_poll_at(clock.now) for config in configs]
    assert [round(a % 1.0, 6) for a in again] == [round(f % 1.0, 6) for f in firsts]
    # At a long interval the first poll (which connects: heartbeats need it) still comes soon.
    [slow] = [config for config in await sync_to_async(load_configs)() if config.interval_ms == 60_000]
    first = ChargePointPoller(slow, Collected(), clock=clock).first_poll_at(clock.now)
    assert 0 <= first - clock.now < STAGGER_MAX_S
