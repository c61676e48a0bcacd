"""The simulated site: cars follow a new limit after a delay, and the site meter measures building + chargers.

Ground truth from outside the code: IEC 61851-1 lets the EV take up to 5 s to follow a new pilot
limit (the simulator's 1.5 s must show as a delay, the limit read back at once); the meter follows
Kirchhoff (a phase carries the building's load plus every charger wired to it) and P = V x I, and
its registers are the Eastron SDM630 map (input registers, float32, 0/2/4 V, 6/8/10 A, 12/14/16 W,
52 total W, 72 import kWh).
"""

import asyncio
import math
import random
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from django.core.management import call_command
from django.core.management.base import CommandError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.choices import CommandAction, OperatorStatus
from gateway.models import DeviceProfile
from gateway.profiles.decode import decode_register, to_telemetry_fields
from gateway.profiles.encode import encode_for_write
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.simulator.behaviour import RESPONSE_DELAY_S, ChargePointBehaviour
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.server import SimulatedChargePoint
from gateway.simulator.site import SiteModel, SiteScript
from tests.conftest import stored_profile
from tests.ports import free_port_run

GENERIC = next(read_spec_file(path) for path in shipped_profile_files() if path.stem == "generic-ev-charger")
SHIPPED = Path(__file__).resolve().parent.parent / "gateway/profiles/shipped"
EASTRON_FILES = (SHIPPED / "meters/eastron-sdm630.json", SHIPPED / "eastron-sdm630.json")


def eastron_profile() -> ProfileSpec:
    """The shipped SDM630 profile once it exists, else the same map built here from Eastron's table."""
    for path in EASTRON_FILES:
        if path.exists():
            return read_spec_file(path)

    def f32(name: str, address: int, role: str = "", **extra: object) -> dict:
        register = {"name": name, "address": address, "function": "input", "data_type": "float32", "length": 2}
        return register | ({"role": role} if role else {}) | extra

    return ProfileSpec.from_dict(
        {
            "slug": "eastron-sdm630",
            "name": "Eastron SDM630",
            "default_unit_id": 1,
            "registers": [
                f32("l1_voltage", 0, "voltage_l1_v"),
                f32("l2_voltage", 2, "voltage_l2_v"),
                f32("l3_voltage", 4, "voltage_l3_v"),
                f32("l1_current", 6, "current_l1_a"),
                f32("l2_current", 8, "current_l2_a"),
                f32("l3_current", 10, "current_l3_a"),
                f32("l1_power", 12),
                f32("l2_power", 14),
                f32("l3_power", 16),
                f32("total_system_power", 52, "power_w"),
                f32("frequency", 70),
                f32("total_import_energy", 72, "energy_total_wh", scale=1000),
            ],
        }
    )


async def read(client: AsyncModbusTcpClient, register: RegisterSpec, unit: int) -> float:
    reader = client.read_input_registers if register.function == "input" else client.read_holding_registers
    response = await reader(register.address, count=register.count, device_id=unit)
    assert not response.isError(), response
    return float(decode_register(register, response.registers))


async def wait_for(condition, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- the car's delay ------------------------------------------------------------------------
@pytest_asyncio.fixture
async def charger() -> AsyncIterator[tuple[SimulatedChargePoint, AsyncModbusTcpClient]]:
    behaviour = ChargePointBehaviour(
        random.Random(5), start_busy=True, mean_fault_interval_s=math.inf, response_delay_s=RESPONSE_DELAY_S
    )
    behaviour.vehicle.max_current_a = 32.0  # type: ignore[union-attr]
    behaviour.vehicle.energy_needed_wh = math.inf  # type: ignore[union-attr]
    behaviour.vehicle.departs_at_s = math.inf  # type: ignore[union-attr]
    behaviour.tick(0.01)  # the 32 A car draws by the 32 A limit
    sim = SimulatedChargePoint("site-cp", GENERIC, behaviour)
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=5, retries=0)
    assert await client.connect()
    yield sim, client
    client.close()
    await sim.stop()


async def charger_state(sim: SimulatedChargePoint, client: AsyncModbusTcpClient) -> tuple[float, float, str]:
    """(limit read back, max phase current, status) as the poller decodes them."""
    spec, unit = sim.profile, sim.unit_id
    limit = await read(client, spec.register_for("current_limit_a"), unit)  # type: ignore[arg-type]
    currents = [await read(client, spec.register_for(f"current_l{n}_a"), unit) for n in (1, 2, 3)]  # type: ignore[arg-type]
    status_register = spec.register(spec.status_rules[0].register)
    raw = await client.read_holding_registers(status_register.address, count=status_register.count, device_id=unit)
    values = {status_register.name: decode_register(status_register, raw.registers)}
    return limit, max(currents), to_telemetry_fields(spec, values).status


async def write_command(sim: SimulatedChargePoint, client: AsyncModbusTcpClient, action: str, value: float) -> None:
    command = sim.profile.command(action)
    assert command is not None
    register = sim.profile.register(command.register)
    written = command.value if command.value is not None else value
    words = encode_for_write(register, written)
    response = await client.write_registers(register.address, words, device_id=sim.unit_id)
    assert not response.isError(), response


async def test_the_car_follows_a_lower_limit_after_the_delay_while_the_limit_reads_back_at_once(charger) -> None:
    sim, client = charger
    limit, drawn, _ = await charger_state(sim, client)
    assert drawn > 25  # a 32 A car at its 32 A limit

    await write_command(sim, client, CommandAction.SET_CURRENT_LIMIT, 10)
    limit, drawn, status = await charger_state(sim, client)
    assert limit == pytest.approx(10)  # at once
    assert drawn > 25 and status == OperatorStatus.CHARGING  # the car has not reacted yet
    sim.tick(RESPONSE_DELAY_S - 0.3)
    assert (await charger_state(sim, client))[1] > 25
    sim.tick(0.4)  # past the delay, well within IEC 61851-1's 5 s
    assert 0 < (await charger_state(sim, client))[1] <= 10


async def test_a_pause_stops_the_current_after_the_delay_and_a_resume_starts_it_after_the_delay(charger) -> None:
    sim, client = charger
    await write_command(sim, client, CommandAction.SET_CURRENT_LIMIT, 16)
    sim.tick(RESPONSE_DELAY_S + 0.1)
    await write_command(sim, client, CommandAction.PAUSE, 0)
    limit, drawn, status = await charger_state(sim, client)
    assert (limit, status) == (0, OperatorStatus.SUSPENDED)  # the charger says so at once
    assert drawn > 10  # the car still draws
    sim.tick(RESPONSE_DELAY_S + 0.1)
    assert (await charger_state(sim, client))[1] == 0

    await write_command(sim, client, CommandAction.RESUME, 16)
    limit, drawn, status = await charger_state(sim, client)
    assert limit == pytest.approx(16) and status == OperatorStatus.CHARGING and drawn == 0
    sim.tick(RESPONSE_DELAY_S + 0.1)
    assert 10 < (await charger_state(sim, client))[1] <= 16


# --- the site and its meter -------------------------------------------------------------------
def test_the_building_load_is_low_at_night_and_high_in_the_afternoon() -> None:
    site = SiteModel(night_load_a=5.0, day_load_a=30.0, phase_weights=(1, 1, 1), noise_a=0.0, start_hour=3.0)
    night = site.building_load_a()
    site.tick(12 * 3600.0)  # 15:00
    afternoon = site.building_load_a()
    assert night == pytest.approx((5.0,) * 3, abs=0.5)
    assert afternoon == pytest.approx((30.0,) * 3, abs=0.5)


def test_noise_moves_the_load_around_its_level() -> None:
    site = SiteModel.flat(20.0)
    site.noise_a = 1.0
    samples = []
    for _ in range(400):
        site.tick(1.0)
        samples.append(site.building_load_a()[0])
    mean = sum(samples) / len(samples)
    assert mean == pytest.approx(20.0, abs=0.3)
    assert max(samples) - min(samples) > 2.0


def test_scripted_steps_apply_at_their_time() -> None:
    site = SiteModel.flat((10.0, 11.0, 12.0))
    site.run(SiteScript().load_step(5.0, delta_a=20).load_step(10.0, level_a=3))
    site.tick(4.9)
    assert site.building_load_a() == pytest.approx((10.0, 11.0, 12.0))
    site.tick(0.2)
    assert site.building_load_a() == pytest.approx((30.0, 31.0, 32.0))
    site.tick(5.0)
    assert site.building_load_a() == pytest.approx((3.0, 3.0, 3.0))


def test_the_import_energy_counts_p_times_t() -> None:
    site = SiteModel.flat(10.0)
    before = site.energy_import_wh
    site.tick(3600.0)
    voltages = site.voltages_v()
    assert site.energy_import_wh - before == pytest.approx(sum(v * 10.0 for v in voltages), rel=1e-6)


@pytest_asyncio.fixture
async def site_fleet() -> AsyncIterator[SimulatorFleet]:
    """Three scripted chargers wired L123, L2, L3 on a flat 10/12/14 A building, with a meter."""
    fleet = SimulatorFleet(GENERIC, 3, base_port=0, seed=1, scripted=True, tick_s=0.05)
    site = fleet.attach_site(
        SiteModel.flat((10.0, 12.0, 14.0)), wiring=["L123", "L2", "L3"], meter_profile=eastron_profile()
    )
    site.run(
        SiteScript()
        .arrive(0.0, 0, phases=3, max_current_a=16)
        .arrive(0.0, 1, phases=1, max_current_a=32)
        .arrive(0.0, 2, phases=3, max_current_a=20)  # a three-phase car on a single-phase charger: one phase
    )
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def test_the_meter_reads_building_plus_each_charger_on_its_wired_phase(site_fleet: SimulatorFleet) -> None:
    meter = site_fleet.meter
    assert meter is not None
    spec = meter.profile
    client = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=5, retries=0)
    assert await client.connect()
    try:
        chargers = [cp.behaviour for cp in site_fleet.charge_points]

        async def all_charging() -> bool:
            return all(max(b.currents_a) > 5 for b in chargers)

        await wait_for(all_charging, what="the three cars charging")
        site_fleet.site.tick(0)  # type: ignore[union-attr]
        by_address = {r.address: r for r in spec.registers}
        for _ in range(3):
            # What each charger draws on its own phases, placed by its wiring: L123, L2, L3.
            own = [list(b.currents_a) for b in chargers]
            expected = [
                10.0 + own[0][0],
                12.0 + own[0][1] + own[1][0],
                14.0 + own[0][2] + own[2][0],
            ]
            measured = [await read(client, by_address[a], meter.unit_id) for a in (6, 8, 10)]
            assert measured == pytest.approx(expected, abs=0.6)  # the cars' noise between the two reads
            assert own[1][1] == own[1][2] == 0 and own[2][1] == own[2][2] == 0  # single-phase cars
            voltages = [await read(client, by_address[a], meter.unit_id) for a in (0, 2, 4)]
            assert all(220 < v < 240 for v in voltages)
            powers = [await read(client, by_address[a], meter.unit_id) for a in (12, 14, 16)]
            assert powers == pytest.approx([v * i for v, i in zip(voltages, measured, strict=True)], rel=0.03)
            total = await read(client, by_address[52], meter.unit_id)
            assert total == pytest.approx(sum(powers), rel=0.03)
            assert await read(client, by_address[72], meter.unit_id) > 0  # kWh
    finally:
        client.close()


async def test_a_load_step_and_a_departure_show_on_the_meter(site_fleet: SimulatorFleet) -> None:
    meter, site = site_fleet.meter, site_fleet.site
    assert meter is not None and site is not None
    l1 = next(r for r in meter.profile.registers if r.address == 6)
    client = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=5, retries=0)
    assert await client.connect()
    try:
        car = site_fleet.charge_points[0].behaviour

        async def charging() -> bool:
            return car.currents_a[0] > 5

        await wait_for(charging, what="car 0 charging")
        site.step(delta_a=25.0)

        async def stepped() -> bool:
            return abs(await read(client, l1, meter.unit_id) - (35.0 + car.currents_a[0])) < 0.6

        await wait_for(stepped, what="the step on L1")
        site.run(SiteScript().leave(site.now_s, 0))

        async def left() -> bool:
            return abs(await read(client, l1, meter.unit_id) - 35.0) < 0.01

        await wait_for(left, what="car 0 gone")
    finally:
        client.close()


async def test_a_stale_meter_does_not_answer_until_it_is_back(site_fleet: SimulatorFleet) -> None:
    meter = site_fleet.meter
    assert meter is not None
    l1 = next(r for r in meter.profile.registers if r.address == 6)
    meter.set_stale(True)
    client = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=0.5, retries=0)
    assert await client.connect()
    try:
        started = time.monotonic()
        with pytest.raises(ModbusException):
            await read(client, l1, meter.unit_id)
        assert time.monotonic() - started >= 0.4  # it timed out: no answer, not an error answer
    finally:
        client.close()
    meter.set_stale(False)
    client = AsyncModbusTcpClient("127.0.0.1", port=meter.port, timeout=5, retries=0)
    assert await client.connect()
    try:
        assert await read(client, l1, meter.unit_id) >= 10  # the building's 10 A, at least
    finally:
        client.close()


# --- manage.py simulate --site-meter-port ---------------------------------------------------------
@pytest.mark.django_db
def test_simulate_serves_a_site_meter_beside_the_chargers() -> None:
    from pymodbus.client import ModbusTcpClient

    if not DeviceProfile.objects.filter(slug="eastron-sdm630").exists():  # before the migration that ships it
        stored_profile(eastron_profile())
    meter_spec = eastron_profile()
    base = free_port_run(3)
    readings: dict[str, float] = {}
    failures: list[BaseException] = []

    def read_site() -> None:
        """Meter L1 minus the chargers' L1, as a client of the real ports (waits for them to serve)."""
        try:
            deadline = time.monotonic() + 15
            meter = ModbusTcpClient("127.0.0.1", port=base + 2, timeout=2, retries=0)
            while not meter.connect():
                assert time.monotonic() < deadline, "the meter never served"
                time.sleep(0.1)
            l1 = next(r for r in meter_spec.registers if r.address == 6)
            response = meter.read_input_registers(l1.address, count=l1.count, device_id=meter_spec.default_unit_id)
            assert not response.isError(), response
            readings["meter_l1_a"] = float(decode_register(l1, response.registers))
            meter.close()
            chargers_l1 = 0.0
            current = GENERIC.register_for("current_l1_a")
            assert current is not None
            for port in (base, base + 1):
                client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
                assert client.connect()
                response = client.read_holding_registers(current.address, count=current.count, device_id=1)
                chargers_l1 += float(decode_register(current, response.registers))
                client.close()
            readings["chargers_l1_a"] = chargers_l1
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    reader = threading.Thread(target=read_site)
    reader.start()
    args = ["--count", "2", "--base-port", str(base), "--site-meter-port", str(base + 2), "--run-for", "4"]
    call_command("simulate", *args, "--building-load-a", "50", "--seed", "3", verbosity=0)
    reader.join(20)
    assert not failures, failures
    building_l1 = readings["meter_l1_a"] - readings["chargers_l1_a"]
    # The building's L1 lies between its night (35 %) and afternoon loads, give or take the noise.
    assert 50 * 0.35 - 3 <= building_l1 <= 50 + 3, readings


@pytest.mark.django_db
def test_simulate_refuses_a_meter_port_among_the_chargers() -> None:
    with pytest.raises(CommandError, match="outside the charge points"):
        call_command("simulate", "--count", "3", "--base-port", "20000", "--site-meter-port", "20001")
    with pytest.raises(CommandError, match="--wiring"):
        call_command("simulate", "--count", "3", "--wiring", "L4")
