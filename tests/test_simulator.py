"""The charge-point simulator: behaviour invariants, and real Modbus TCP reads and writes on loopback."""

import asyncio
import logging
import math
import random
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from django.core.management import CommandError, call_command
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.constants import ExcCodes

from gateway.choices import Function, OperatorStatus, PollGroup
from gateway.modbus.planner import plan_reads
from gateway.profiles.codec import Value
from gateway.profiles.decode import decode_block, to_telemetry_fields
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.behaviour import PHASE_STATUS, ChargePointBehaviour, Phase
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.registers import WriteRefused, build_image, check_write, status_code_for
from gateway.simulator.server import SimulatedChargePoint
from tests.conftest import wait_for

UNIT = 1
PROFILE = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
REGISTERS = {register.name: register for register in PROFILE.registers}


# --- behaviour (pure) -------------------------------------------------------------------------
def test_behaviour_invariants_over_simulated_days() -> None:
    events: Counter[str] = Counter()
    phases_seen: set[int] = set()
    for seed in (1, 2, 3):
        behaviour = ChargePointBehaviour(random.Random(seed))
        energy, session = behaviour.values()["energy_total_wh"], behaviour.values()["session_energy_wh"]
        for _ in range(int(24 * 3600 / 10)):
            kinds = {event.kind for event in behaviour.tick(10.0)}
            events.update(kinds)
            values = behaviour.values()
            currents = [values[f"current_l{n}_a"] for n in (1, 2, 3)]
            voltages = [values[f"voltage_l{n}_v"] for n in (1, 2, 3)]

            assert values["energy_total_wh"] >= energy
            if "session_started" in kinds:
                assert values["session_energy_wh"] <= 100
            else:
                assert values["session_energy_wh"] >= session
            energy, session = values["energy_total_wh"], values["session_energy_wh"]

            power = sum(v * i for v, i in zip(voltages, currents, strict=True))
            assert values["power_w"] == pytest.approx(power, abs=0.06)
            assert all(0 <= current <= values["max_current_a"] for current in currents)
            assert all(220 <= voltage <= 240 for voltage in voltages)
            assert 0 < values["temperature_c"] < 70
            assert (behaviour.status, behaviour.iec61851_state) == PHASE_STATUS[behaviour.phase]
            assert (values["error_code"] != 0) == (behaviour.status == OperatorStatus.FAULTED)
            if behaviour.status == OperatorStatus.CHARGING:
                phases_seen.add(sum(current > 0 for current in currents))
            else:
                assert currents == [0, 0, 0] and values["power_w"] == 0
    assert events["session_started"] >= 6
    assert events["charging_started"] >= 6
    assert events["session_finished"] >= 6
    assert events["vehicle_unplugged"] >= 6
    assert events["fault"] >= 1 and events["fault_cleared"] >= 1
    assert phases_seen == {1, 3}


def test_behaviour_replays_from_its_seed() -> None:
    first, second = (ChargePointBehaviour(random.Random(42), speedup=30) for _ in range(2))
    for _ in range(500):
        assert first.tick(0.2) == second.tick(0.2)
    assert first.values() == second.values()
    assert first.now_s == pytest.approx(500 * 0.2 * 30)


def test_current_limit_caps_and_pauses_charging() -> None:
    behaviour = ChargePointBehaviour(random.Random(7), start_busy=True, mean_fault_interval_s=math.inf)
    assert behaviour.status == OperatorStatus.CHARGING
    behaviour.set_max_current(10)
    for _ in range(60):
        behaviour.tick(5)
        assert behaviour.status == OperatorStatus.CHARGING
        assert 0 < max(behaviour.currents_a) <= 10

    behaviour.set_max_current(0)  # applies at once, before the next tick
    assert behaviour.status == OperatorStatus.SUSPENDED and behaviour.iec61851_state == "B"
    energy = behaviour.energy_total_wh
    behaviour.tick(60)
    assert behaviour.currents_a == [0, 0, 0] and behaviour.energy_total_wh == energy

    behaviour.set_max_current(16)
    assert behaviour.status == OperatorStatus.CHARGING
    assert 0 < max(behaviour.currents_a) <= 16


# --- register image (pure) ----------------------------------------------------------------------
def test_status_table_reverse_lookup() -> None:
    assert status_code_for(PROFILE, OperatorStatus.AVAILABLE) == 0
    assert status_code_for(PROFILE, OperatorStatus.SUSPENDED) == 3
    assert status_code_for(PROFILE, OperatorStatus.OFFLINE) is None


def test_image_clips_instead_of_wrapping() -> None:
    image = build_image(PROFILE, {"current_l1": 900.0, "power": -5, "temperature": -12.3})
    assert image[Function.HOLDING][4] == 0xFFFF
    assert [image[Function.HOLDING][address] for address in (2, 3)] == [0, 0]
    assert image[Function.HOLDING][14] == (-123) & 0xFFFF


@pytest.mark.parametrize(
    ("address", "words", "code"),
    [
        (15, [321], ExcCodes.ILLEGAL_VALUE),  # 32.1 A > write_max
        (0, [1], ExcCodes.ILLEGAL_ADDRESS),  # read-only
        (3, [1], ExcCodes.ILLEGAL_ADDRESS),  # half of a 32-bit value, and read-only
        (15, [100, 0], ExcCodes.ILLEGAL_ADDRESS),  # runs past the map
        (50, [1], ExcCodes.ILLEGAL_ADDRESS),  # undefined
    ],
)
def test_check_write_refusals(address: int, words: list[int], code: ExcCodes) -> None:
    with pytest.raises(WriteRefused) as refused:
        check_write(PROFILE, Function.HOLDING, address, words)
    assert refused.value.code == code


# --- over Modbus TCP ----------------------------------------------------------------------------
@pytest_asyncio.fixture
async def fleet() -> AsyncIterator[SimulatorFleet]:
    fleet = SimulatorFleet(PROFILE, 2, base_port=0, speedup=200, seed=11, tick_s=0.05)
    for charge_point in fleet.charge_points:
        charge_point.behaviour.mean_fault_interval_s = math.inf  # no surprise faults mid-test
    async with fleet:
        yield fleet


@pytest_asyncio.fixture
async def client(fleet: SimulatorFleet) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=fleet.charge_points[0].port, timeout=2, retries=0)
    assert await client.connect()
    yield client
    client.close()


async def read_profile(client: AsyncModbusTcpClient, profile: ProfileSpec = PROFILE) -> dict[str, Value]:
    """Read and decode every register of the profile, as the poller would."""
    read = {
        Function.HOLDING: client.read_holding_registers,
        Function.INPUT: client.read_input_registers,
        Function.COIL: client.read_coils,
        Function.DISCRETE_INPUT: client.read_discrete_inputs,
    }
    values: dict[str, Value] = {}
    for request in plan_reads(profile, (PollGroup.FAST, PollGroup.SLOW)):
        response = await read[request.function](request.address, count=request.count, device_id=UNIT)
        assert not response.isError(), response
        words = response.bits[: request.count] if request.function in ("coil", "discrete_input") else response.registers
        decoded, errors = decode_block(request.registers, request.address, words)
        assert not errors
        values.update(decoded)
    return values


async def test_pinned_values_read_back_over_modbus(fleet: SimulatorFleet, client: AsyncModbusTcpClient) -> None:
    charge_point = fleet.charge_points[0]
    pinned = {
        "power_w": 7360,
        "current_l1_a": 16.01,
        "voltage_l2_v": 229.7,
        "energy_total_wh": 1_234_567,
        "session_energy_wh": 4321,
        "temperature_c": -5.3,
        "max_current_a": 20.5,
        "error_code": 7,
        "serial_number": "TEST-0001",
    }
    for name, value in pinned.items():
        charge_point.set_value(name, value)
    charge_point.set_status(OperatorStatus.SUSPENDED)

    values = await read_profile(client)
    for name, value in pinned.items():
        register = REGISTERS.get(name) or PROFILE.register_for(name)
        assert register is not None
        if isinstance(value, str):
            assert values[register.name] == value
        else:
            assert values[register.name] == pytest.approx(value, abs=register.scale / 2)
    fields = to_telemetry_fields(PROFILE, values)
    assert (fields.status, fields.iec61851_state) == ("suspended", "B")
    assert not fields.problems

    with pytest.raises(KeyError):
        charge_point.set_value("no_such_register", 1)
    charge_point.clear_overrides()
    values = await read_profile(client)
    assert str(values["serial_number"]).startswith("EVD")
    assert values["firmware_version"]


async def test_max_current_write_is_accepted_and_honoured(fleet: SimulatorFleet, client: AsyncModbusTcpClient) -> None:
    charge_point = fleet.charge_points[0]
    charge_point.connect_vehicle(phases=3)  # no-op if it is already in a session
    await wait_for(lambda: charge_point.behaviour.phase == Phase.CHARGING, what="charging")

    response = await client.write_register(15, 100, device_id=UNIT)  # 10.0 A
    assert not response.isError(), response
    assert [(w.register, w.value) for w in charge_point.last_writes] == [("max_current", 10.0)]
    for _ in range(5):
        values = await read_profile(client)
        currents = [values[f"current_l{n}"] for n in (1, 2, 3)]
        assert values["max_current"] == 10.0 and values["status"] == 2
        assert 0 < max(currents) <= 10.0
        await asyncio.sleep(0.05)  # let a tick pass between reads

    assert not (await client.write_register(15, 0, device_id=UNIT)).isError()  # 0 A pauses
    values = await read_profile(client)
    assert values["status"] == 3  # suspended
    assert [values[f"current_l{n}"] for n in (1, 2, 3)] == [0, 0, 0]

    assert not (await client.write_registers(15, [160], device_id=UNIT)).isError()  # FC16
    await wait_for(lambda: charge_point.behaviour.status == OperatorStatus.CHARGING, what="resumed")
    assert charge_point.behaviour.max_current_a == 16.0


async def test_refused_writes_answer_modbus_exceptions(fleet: SimulatorFleet, client: AsyncModbusTcpClient) -> None:
    charge_point = fleet.charge_points[0]
    before = charge_point.behaviour.max_current_a
    out_of_range = await client.write_register(15, 330, device_id=UNIT)  # 33.0 A > 32 A
    assert out_of_range.isError() and out_of_range.exception_code == ExcCodes.ILLEGAL_VALUE
    read_only = await client.write_register(0, 1, device_id=UNIT)
    assert read_only.isError() and read_only.exception_code == ExcCodes.ILLEGAL_ADDRESS
    read_only_32 = await client.write_registers(2, [0, 100], device_id=UNIT)
    assert read_only_32.isError() and read_only_32.exception_code == ExcCodes.ILLEGAL_ADDRESS
    assert charge_point.last_writes == []
    assert charge_point.behaviour.max_current_a == before


@pytest.mark.parametrize(
    ("function", "address", "count"),
    [("holding", 16, 1), ("holding", 14, 4), ("holding", 90, 20), ("input", 0, 1), ("coil", 0, 1)],
)
async def test_undefined_addresses_are_illegal(
    client: AsyncModbusTcpClient, function: str, address: int, count: int
) -> None:
    read = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
    }[function]
    response = await read(address, count=count, device_id=UNIT)
    assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_ADDRESS


async def test_fleet_stops_cleanly() -> None:
    fleet = SimulatorFleet(PROFILE, 2, base_port=0, seed=3, tick_s=0.05)
    await fleet.start()
    ports = [charge_point.port for charge_point in fleet.charge_points]
    assert len(set(ports)) == 2 and all(ports)
    client = AsyncModbusTcpClient("127.0.0.1", port=ports[1], timeout=2, retries=0)
    assert await client.connect()
    assert not (await client.read_holding_registers(0, count=16, device_id=UNIT)).isError()
    client.close()
    await fleet.stop()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    for port in ports:
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


def test_fleet_runs_in_a_thread_for_sync_code() -> None:
    fleet = SimulatorFleet(PROFILE, 2, base_port=0, seed=5, tick_s=0.05)
    with fleet.run_in_thread() as running:
        charge_point: SimulatedChargePoint = running.charge_points[1]
        charge_point.set_value("temperature_c", 41.5)
        client = ModbusTcpClient("127.0.0.1", port=charge_point.port, timeout=2, retries=0)
        assert client.connect()
        try:
            response = client.read_holding_registers(14, count=1, device_id=UNIT)
        finally:
            client.close()
        assert response.registers == [415]
        ports = [cp.port for cp in running.charge_points]
    assert not [t for t in threading.enumerate() if t.name == "simulator-fleet"]
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


# --- manage.py simulate -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--base-port", "70000"],
        ["--base-port", "65535", "--count", "2"],
        ["--count", "0"],
        ["--speedup", "0"],
    ],
)
def test_simulate_rejects_bad_options(args: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("simulate", *args)


@pytest.mark.django_db
def test_simulate_rejects_unknown_profile() -> None:
    with pytest.raises(CommandError, match="no-such-charger"):
        call_command("simulate", "--profile", "no-such-charger", "--run-for", "1")


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free ports after it."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports")


@pytest.mark.django_db
def test_simulate_serves_consecutive_ports_and_stops(generic_profile: object, caplog: pytest.LogCaptureFixture) -> None:
    base = free_port_run(2)
    with caplog.at_level(logging.INFO, logger="gateway"):
        call_command("simulate", "--count", "2", "--base-port", str(base), "--seed", "1", "--run-for", "0.3")
    started = [r.getMessage() for r in caplog.records if "generic-ev-charger on" in r.getMessage()]
    assert started[0].startswith(f"sim-cp-001: generic-ev-charger on 127.0.0.1:{base} ")
    assert started[1].startswith(f"sim-cp-002: generic-ev-charger on 127.0.0.1:{base + 1} ")
    assert any(r.getMessage() == "simulator stopping" for r in caplog.records)
