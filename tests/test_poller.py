"""The poll loop against real simulator Modbus servers: decode, dead devices, live reload."""

import asyncio
import json
import socket
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from gateway.modbus.poller import ChargePointPoller, Poller, load_configs
from gateway.models import ChargePoint
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.telemetry import decode_record, encode_record
from tests.conftest import free_port, make_charge_point, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")


class Collected:
    """A publish callback that keeps every record, validated against the schema."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, record: dict) -> None:
        self.records.append(decode_record(encode_record(record)))

    def of(self, slug: str) -> list[dict]:
        return [r for r in self.records if r["charge_point"] == slug]


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
            "max_current_a": 16.0,
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


def hung_charge_point() -> socket.socket:
    """A TCP port that accepts connections but never answers a Modbus request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


async def test_dead_and_hung_charge_points_go_offline_without_delaying_the_others(site, generic_profile) -> None:
    hung = hung_charge_point()
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=2) as fleet:
        for index, sim in enumerate(fleet.charge_points):
            await sync_to_async(make_charge_point)(site, generic_profile, f"live-{index}", sim.port)
        await sync_to_async(make_charge_point)(site, generic_profile, "dead", free_port())
        await sync_to_async(make_charge_point)(site, generic_profile, "hung", hung.getsockname()[1])
        collected = Collected()
        poller, stop = Poller(collected), asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(lambda: collected.of("hung"), timeout_s=10, what="the hung charge point timing out")
            start = {slug: len(collected.of(slug)) for slug in ("live-0", "live-1")}
            # While the dead and hung charge points keep failing, the live ones keep their 250 ms pace.
            await wait_for(
                lambda: all(len(collected.of(s)) >= start[s] + 8 for s in start),
                timeout_s=4,
                what="live charge points to keep updating",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    hung.close()
    for slug in ("dead", "hung"):
        offline = collected.of(slug)[0]
        assert offline["status"] == "offline" and offline["quality"] == "bad"
        assert "127.0.0.1" in offline["error"]
    assert all(r["status"] != "offline" for s in ("live-0", "live-1") for r in collected.of(s))
    # Backoff: the dead one is retried less and less often, not hammered every 250 ms.
    assert len(collected.of("dead")) < len(collected.of("live-0")) / 2
    assert [r["seq"] for r in collected.of("live-0")] == list(range(1, len(collected.of("live-0")) + 1))


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
                lambda: sim.heartbeats_received.get(lifebit.register, 0) >= 3,
                timeout_s=3 * lifebit.interval_s + 2,
                what="three lifebit writes",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert len(collected.records) == 1  # one poll in all that time: the heartbeats ran on their own timer
    assert poller.heartbeats_sent >= 3


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
