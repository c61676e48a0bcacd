"""The charge-point simulator: behaviour invariants, and real Modbus TCP reads and writes on loopback."""

import asyncio
import logging
import math
import random
import re
import socket
import statistics
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
from gateway.profiles.validate import profile_problems
from gateway.simulator.behaviour import PHASE_STATUS, ChargePointBehaviour, Phase
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.registers import ProfileImage, WriteRefused
from gateway.simulator.server import SimulatedChargePoint
from tests.conftest import wait_for
from tests.ports import free_port_run
from tests.test_impersonation import check_impersonation

UNIT = 1
PROFILE = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
REGISTERS = {register.name: register for register in PROFILE.registers}
IMAGE = ProfileImage(PROFILE, UNIT)


# --- behaviour (pure) -------------------------------------------------------------------------
def test_behaviour_invariants_over_simulated_days() -> None:
    events: Counter[str] = Counter()
    phases_seen: set[int] = set()
    for seed in (1, 2, 3):
        behaviour = ChargePointBehaviour(random.Random(seed))
        energy, session = behaviour.values()["energy_total_wh"], behaviour.values()["session_energy_wh"]
        open_faults = 0
        for _ in range(int(24 * 3600 / 10)):
            kinds = {event.kind for event in behaviour.tick(10.0)}
            events.update(kinds)
            # A fault is cleared once, and only after it happened.
            open_faults += ("fault" in kinds) - ("fault_cleared" in kinds)
            assert open_faults in (0, 1)
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
            assert all(0 <= current <= values["current_limit_a"] for current in currents)
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
    # Faults come at the configured rate: 3 days at one per 6 h is 12 on average (Poisson: 4..24 is > 99.8 %).
    assert behaviour.mean_fault_interval_s == 6 * 3600
    assert 4 <= events["fault"] <= 24
    assert events["fault"] - events["fault_cleared"] in (0, 1, 2, 3)  # at most one still open per seed
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
def test_status_codes_reverse_the_status_rules() -> None:
    # The generic rules look at status and error_code (any error code but 0 is a fault).
    no_error = {"error_code": 0}
    assert IMAGE.status.values_for(OperatorStatus.AVAILABLE, "A") == (("available", "A"), {"status": 0} | no_error)
    assert IMAGE.status.values_for(OperatorStatus.SUSPENDED, None) == (("suspended", "B"), {"status": 3} | no_error)
    # No rule for the exact pair: same status first, then same IEC state.
    assert IMAGE.status.values_for(OperatorStatus.CHARGING, "D") == (("charging", "C"), {"status": 2} | no_error)
    assert IMAGE.status.values_for(OperatorStatus.OFFLINE, "F") == (("faulted", "F"), {"status": 5, "error_code": 1})
    assert not IMAGE.status.can_report(OperatorStatus.OFFLINE)


def test_image_clips_instead_of_wrapping() -> None:
    words = IMAGE.words(UNIT, Function.HOLDING, {"current_l1": 900.0, "power": -5, "temperature": -12.3})
    assert words[4] == 0xFFFF
    assert [words[address] for address in (2, 3)] == [0, 0]
    assert words[14] == (-123) & 0xFFFF


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
        IMAGE.check_write(UNIT, Function.HOLDING, address, words)
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
        "current_limit_a": 20.5,
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
    # An error code outranks the suspended status code (docs/profiles.md, status precedence).
    assert (fields.status, fields.iec61851_state) == ("faulted", "F")
    assert fields.problems == []

    with pytest.raises(KeyError):
        charge_point.set_value("no_such_register", 1)
    charge_point.clear_overrides()
    values = await read_profile(client)
    assert re.fullmatch(r"EVD\d{8}", str(values["serial_number"]))
    assert re.fullmatch(r"[12]\.\d\.\d{1,2}", str(values["firmware_version"]))  # identity values look real


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
    assert len(set(ports)) == 2 and 0 not in ports
    for port in ports:  # both answer before the stop
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert await client.connect()
        assert len((await client.read_holding_registers(0, count=16, device_id=UNIT)).registers) == 16
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
        ["--lean", "--processes", "0"],
    ],
)
def test_simulate_rejects_bad_options(args: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("simulate", *args)


@pytest.mark.django_db
def test_simulate_rejects_unknown_profile() -> None:
    with pytest.raises(CommandError, match="no-such-charger"):
        call_command("simulate", "--profile", "no-such-charger", "--run-for", "1")


@pytest.mark.django_db
def test_simulate_serves_consecutive_ports_and_stops(generic_profile: object, caplog: pytest.LogCaptureFixture) -> None:
    base = free_port_run(2)
    with caplog.at_level(logging.INFO, logger="gateway"):
        call_command("simulate", "--count", "2", "--base-port", str(base), "--seed", "1", "--run-for", "0.3")
    started = [r.getMessage() for r in caplog.records if "generic-ev-charger on" in r.getMessage()]
    assert len(started) == 2
    assert started[0].startswith(f"sim-cp-001: generic-ev-charger on 127.0.0.1:{base} ")
    assert started[1].startswith(f"sim-cp-002: generic-ev-charger on 127.0.0.1:{base + 1} ")
    assert any(r.getMessage() == "simulator stopping" for r in caplog.records)


# --- real chargers' quirks, on small hand-made profiles -----------------------------------------
def quirk_profile(
    slug: str, registers: list[dict], rules: list[tuple[str, str, str, str]], **extra: object
) -> ProfileSpec:
    """A consistent profile from compact rows; rules are (register, code, IEC state, status)."""
    spec = ProfileSpec.from_dict(
        {
            "slug": slug,
            "name": slug,
            "registers": registers,
            "status_rules": [
                {"register": r, "code": c, "iec61851_state": iec, "status": status} for r, c, iec, status in rules
            ],
            **extra,
        }
    )
    assert profile_problems(spec) == []
    return spec


def reg(name: str, address: int, data_type: str = "uint16", **extra: object) -> dict:
    return {"name": name, "address": address, "data_type": data_type, "length": extra.pop("length", 1), **extra}


def limit_command(register: str, verify_register: str = "") -> dict:
    """The set_current_limit command of a quirk profile: 6..32 A to `register`."""
    return {
        "action": "set_current_limit",
        "register": register,
        "min_value": 6,
        "max_value": 32,
        "verify_register": verify_register,
    }


F32 = {"data_type": "float32", "length": 2}
U32 = {"data_type": "uint32", "length": 2}
# Alfen Eve: floats, NaN for what it lacks, text mode-3 state, station registers on unit 200.
ALFEN_LIKE = quirk_profile(
    "quirk-alfen",
    [
        reg("meter_state", 300, enum={"0x01": "initialised", "0x02": "updated"}),
        *(reg(f"voltage_l{n}", 304 + 2 * n, **F32, role=f"voltage_l{n}_v") for n in (1, 2, 3)),
        *(reg(f"current_l{n}", 318 + 2 * n, **F32, role=f"current_l{n}_a") for n in (1, 2, 3)),
        reg("frequency", 336, **F32),
        reg("active_power", 344, **F32, role="power_w"),
        reg("energy_delivered", 374, "float64", length=4, role="energy_total_wh"),
        reg("availability", 1200, enum={"1": "operative", "0": "inoperative"}),
        reg("mode3_state", 1201, "string", length=5, role="iec61851_state"),
        reg("applied_max_current", 1206, **F32, role="current_limit_a"),
        reg("max_current_setpoint", 1210, **F32, unit="A", access="rw", write_min=0, write_max=32),
        reg("station_serial", 157, "string", length=11, unit_id=200, poll_group="slow"),
        reg("table_version", 122, "int16", unit_id=200, poll_group="slow"),
        reg("temperature", 1102, **F32, unit_id=200, role="temperature_c"),
    ],
    [
        ("availability", "0", "A", "unavailable"),
        ("mode3_state", "A", "A", "available"),
        ("mode3_state", "B1", "B", "preparing"),
        ("mode3_state", "B2", "B", "suspended"),
        ("mode3_state", "C1", "B", "suspended"),
        ("mode3_state", "C2", "C", "charging"),
        ("mode3_state", "D2", "D", "charging"),
        ("mode3_state", "E", "E", "faulted"),
        ("mode3_state", "F", "F", "faulted"),
    ],
    simulator={"nan_unavailable": True},
    commands=[limit_command("max_current_setpoint")],
    heartbeats=[{"register": "max_current_setpoint", "interval_s": 25, "value_from": "max_current_setpoint"}],
)
# ABB Terra AC: state in bits 8-14 of a uint32, lock state decides 'finished', write-only setpoint.
ABB_LIKE = quirk_profile(
    "quirk-abb",
    [
        reg("serial_number", 16384, "bytes", length=4, poll_group="slow"),
        reg("error_code", 16392, **U32, role="error_code"),
        reg("socket_lock_state", 16394, **U32, enum={"0x0000": "no cable", "0x0101": "locked", "0x0111": "locked"}),
        reg("charging_state", 16396, **U32, mask=0x7F00, enum={str(n): f"state {n}" for n in range(6)}),
        reg("charging_current_limit", 16398, **U32, scale=0.001, unit="A", role="current_limit_a"),
        *(reg(f"current_l{n}", 16398 + 2 * n, **U32, scale=0.001, role=f"current_l{n}_a") for n in (1, 2, 3)),
        *(reg(f"voltage_l{n}", 16404 + 2 * n, **U32, scale=0.1, role=f"voltage_l{n}_v") for n in (1, 2, 3)),
        reg("active_power", 16412, **U32, role="power_w"),
        reg("session_energy", 16414, **U32, role="session_energy_wh"),
        reg("set_current_limit", 16640, **U32, scale=0.001, unit="A", access="w", write_max=32),
        reg("set_timeout", 16646, access="w"),
    ],
    [
        ("charging_state", "0", "A", "available"),
        ("charging_state", "1", "B", "preparing"),
        ("charging_state", "2", "B", "preparing"),
        ("charging_state", "3", "B", "suspended"),
        ("charging_state", "4", "C", "charging"),
        ("socket_lock_state", "257", "B", "finishing"),
        ("socket_lock_state", "273", "B", "finishing"),
        ("charging_state", "5", "A", "available"),
    ],
    heartbeats=[{"register": "set_timeout", "interval_s": 30, "value": 60}],
    commands=[limit_command("set_current_limit", "charging_current_limit")],
)
# KEBA P30: every value a uint32 read exactly 2 registers at a time; disabled through 5014.
KEBA_LIKE = quirk_profile(
    "quirk-keba",
    [
        reg("charging_state", 1000, **U32, enum={str(n): f"state {n}" for n in range(6)}),
        reg(
            "cable_state",
            1004,
            **U32,
            enum={"0": "no cable", "1": "station", "3": "locked", "5": "ev", "7": "ev locked"},
        ),
        reg("error_code", 1006, **U32, role="error_code"),
        *(reg(f"current_l{n}", 1006 + 2 * n, **U32, scale=0.001, role=f"current_l{n}_a") for n in (1, 2, 3)),
        reg("serial_number", 1014, **U32, poll_group="slow"),
        reg("active_power", 1020, **U32, scale=0.001, role="power_w"),
        reg("total_energy", 1036, **U32, scale=0.1, role="energy_total_wh"),
        reg("voltage_l1", 1040, **U32, role="voltage_l1_v"),
        reg("max_charging_current", 1100, **U32, scale=0.001, unit="A", role="current_limit_a"),
        reg("set_charging_current", 5004, scale=0.001, unit="A", access="w", write_min=6, write_max=32),
        reg("enable", 5014, access="w", enum={"0": "disabled", "1": "enabled"}),
        reg("set_failsafe_timeout", 5018, access="w"),
    ],
    [
        ("cable_state", "0", "A", "available"),
        ("cable_state", "1", "A", "available"),
        ("cable_state", "3", "A", "available"),
        ("charging_state", "3", "C", "charging"),
        ("charging_state", "4", "F", "faulted"),
        ("charging_state", "5", "B", "suspended"),
        ("charging_state", "2", "B", "preparing"),
        ("charging_state", "1", "B", "preparing"),
    ],
    default_unit_id=255,
    fixed_read_size=2,
    simulator={"enable_register": "enable"},
    commands=[limit_command("set_charging_current", "max_charging_current")],
    heartbeats=[{"register": "set_failsafe_timeout", "interval_s": 30, "value": 60}],
)
# Vestel EVC04: input registers read with FC03 or FC04, UTF-16 strings, two status registers.
VESTEL_LIKE = quirk_profile(
    "quirk-vestel",
    [
        reg("serial_number", 100, "string", length=25, encoding="utf-16-be", function="input", poll_group="slow"),
        reg("charging_state", 1001, function="input", enum={"0": "idle", "1": "charging"}),
        reg("cable_state", 1004, function="input", enum={str(n): f"state {n}" for n in range(4)}),
        *(reg(f"current_l{n}", 1006 + 2 * n, function="input", scale=0.001, role=f"current_l{n}_a") for n in (1, 2, 3)),
        reg("voltage_l1", 1014, function="input", role="voltage_l1_v"),
        reg("active_power", 1020, **U32, function="input", role="power_w"),
        reg("total_energy", 1036, **U32, function="input", scale=100, role="energy_total_wh"),
        reg("charging_current", 5004, unit="A", access="rw", write_min=0, write_max=32),
        reg("alive_register", 6000, access="rw"),
    ],
    [
        ("cable_state", "0", "A", "available"),
        ("cable_state", "1", "A", "available"),
        ("charging_state", "1", "C", "charging"),
        ("cable_state", "2", "B", "preparing"),
        ("cable_state", "3", "B", "suspended"),
    ],
    default_unit_id=255,
    simulator={"mirror_functions": True},
    heartbeats=[{"register": "alive_register", "interval_s": 10, "value": 1}],
    commands=[limit_command("charging_current")],
)
# Mennekes AMTRON: low word first, strings with the bytes of each register swapped, no heartbeat.
MENNEKES_LIKE = quirk_profile(
    "quirk-mennekes",
    [
        reg("temperature", 768, "int16", function="input", role="temperature_c"),
        reg("cp_signal_state", 770, function="input", enum={str(n): f"state {n}" for n in range(1, 9)}),
        reg("error_code", 772, function="input", role="error_code"),
        reg("serial_number", 779, **U32, function="input", byte_order="CDAB", poll_group="slow"),
        reg("session_energy", 781, **U32, function="input", byte_order="CDAB", role="session_energy_wh"),
        reg("active_power", 783, **U32, function="input", byte_order="CDAB", role="power_w"),
        reg("wallbox_name", 785, "string", length=11, function="input", byte_order="BADC", poll_group="slow"),
        reg("current_limit", 1024, unit="A", access="rw", write_min=0, write_max=32),
    ],
    [
        ("cp_signal_state", "1", "A", "available"),
        ("cp_signal_state", "2", "A", "available"),
        ("cp_signal_state", "3", "B", "preparing"),
        ("cp_signal_state", "4", "B", "suspended"),
        ("cp_signal_state", "5", "C", "charging"),
        ("cp_signal_state", "6", "C", "charging"),
        ("cp_signal_state", "7", "E", "faulted"),
        ("cp_signal_state", "8", "F", "faulted"),
    ],
    default_unit_id=255,
    commands=[limit_command("current_limit")],
)
# Coils, discrete inputs and single bits, with a status rule on a bit.
BITS_LIKE = quirk_profile(
    "quirk-bits",
    [
        reg("state", 0, role="vendor_status", enum={"1": "ready", "2": "charging"}),
        reg("power", 1, role="power_w"),
        reg("relay_closed", 2, "bit", bit=3),
        reg("charging_enabled", 0, "bool", function="coil", access="rw"),
        reg("cable_plugged", 5, "bool", function="discrete_input"),
        # IEC 61851 limits: 6 A to 32 A, 0 pauses
        reg("max_current", 6, role="current_limit_a", access="rw", write_min=6, write_max=32, write_values=[0]),
    ],
    [
        ("cable_plugged", "0", "A", "available"),
        ("state", "2", "C", "charging"),
        ("state", "1", "B", "preparing"),
    ],
)
QUIRKS = [ALFEN_LIKE, ABB_LIKE, KEBA_LIKE, VESTEL_LIKE, MENNEKES_LIKE, BITS_LIKE]


@pytest.mark.parametrize("spec", QUIRKS, ids=[spec.slug for spec in QUIRKS])
async def test_quirk_profiles_are_impersonated(spec: ProfileSpec) -> None:
    await check_impersonation(spec)


def test_abb_state_lives_under_its_mask() -> None:
    image = ProfileImage(ABB_LIKE, 1)
    (pair, codes) = image.status.values_for("charging", "C")
    assert pair == ("charging", "C") and codes["charging_state"] == 4
    words = image.words(1, Function.HOLDING, codes)
    assert [words[16396], words[16397]] == [0, 4 << 8]
    (pair, codes) = image.status.values_for("finishing", "B")
    assert codes["socket_lock_state"] == 0x0101 and codes["charging_state"] not in (0, 1, 2, 3, 4)


def test_keba_status_uses_both_registers() -> None:
    status = ProfileImage(KEBA_LIKE, 255).status
    charging = status.values_for("charging", "C")[1]
    assert charging["charging_state"] == 3 and charging["cable_state"] in (5, 7)  # a vehicle is plugged in
    assert status.values_for("available", "A")[1]["cable_state"] == 0
    assert status.values_for("offline", None)[0] == ("available", "A")  # nothing else to show


def test_alfen_serves_nan_and_strings_on_two_unit_ids() -> None:
    image = ProfileImage(ALFEN_LIKE, 1)
    assert image.unit_ids == (1, 200)
    words = image.words(1, Function.HOLDING, {"mode3_state": "C2", "availability": 1})
    assert [words[336], words[337]] == [0x7FC0, 0]  # frequency: NaN, the model has none
    assert [words[1201], words[1202]] == [ord("C") << 8 | ord("2"), 0]
    assert words[312] == 0xFFFF  # a gap inside the planned read
    assert image.check_read(1, Function.HOLDING, 157, 11) == ExcCodes.ILLEGAL_ADDRESS  # station register
    assert image.check_read(200, Function.HOLDING, 157, 11) is None


def test_strings_follow_encoding_and_byte_order() -> None:
    vestel = ProfileImage(VESTEL_LIKE, 255).words(255, Function.INPUT, {"serial_number": "AB"})
    assert [vestel[100], vestel[101], vestel[102]] == [0x0041, 0x0042, 0]
    mennekes = ProfileImage(MENNEKES_LIKE, 255).words(255, Function.INPUT, {"wallbox_name": "AB", "power": 0})
    assert mennekes[785] == ord("B") << 8 | ord("A")
    low_first = ProfileImage(MENNEKES_LIKE, 255).words(255, Function.INPUT, {"active_power": 0x12345})
    assert [low_first[783], low_first[784]] == [0x2345, 0x1]


async def test_keba_reads_must_be_two_registers_and_enable_pauses() -> None:
    async with SimulatorFleet(KEBA_LIKE, 1, base_port=0, seed=4, speedup=300, tick_s=0.05) as fleet:
        sim = fleet.charge_points[0]
        sim.behaviour.mean_fault_interval_s = math.inf
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            assert len((await client.read_holding_registers(1000, count=2, device_id=255)).registers) == 2
            for address, count in ((1000, 4), (1000, 1), (1001, 2), (1002, 2)):
                response = await client.read_holding_registers(address, count=count, device_id=255)
                assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_ADDRESS
            sim.connect_vehicle(phases=3)
            await wait_for(lambda: sim.behaviour.phase == Phase.CHARGING, what="charging")
            assert not (await client.write_register(5004, 12_000, device_id=255)).isError()
            assert not (await client.write_register(5014, 0, device_id=255)).isError()  # disable
            assert sim.behaviour.status == OperatorStatus.SUSPENDED
            assert not (await client.write_register(5004, 16_000, device_id=255)).isError()  # still disabled
            assert sim.behaviour.status == OperatorStatus.SUSPENDED
            assert not (await client.write_register(5014, 1, device_id=255)).isError()
            assert sim.behaviour.status == OperatorStatus.CHARGING and sim.behaviour.max_current_a == 16.0
        finally:
            client.close()


async def test_unknown_role_and_unreportable_status_are_clear_errors() -> None:
    sim = SimulatorFleet(KEBA_LIKE, 1, base_port=0, seed=1).charge_points[0]
    with pytest.raises(KeyError, match="quirk-keba has no role 'temperature_c'"):
        sim.set_value("temperature_c", 20)
    with pytest.raises(ValueError, match="cannot report unavailable"):
        sim.set_status("unavailable")
    sim.set_status("charging")
    assert sim.served_status == ("charging", "C")


@pytest.mark.django_db
def test_simulate_profiles_cycles_and_names_unknown_slugs(
    generic_profile: object, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(CommandError, match=r"'nope' \(known: .*generic-ev-charger"):
        call_command("simulate", "--profiles", "generic-ev-charger,nope", "--run-for", "1")
    base = free_port_run(3)
    with caplog.at_level(logging.INFO, logger="gateway"):
        call_command(
            "simulate", "--profiles", "generic-ev-charger", "--count", "3", "--base-port", str(base), "--run-for", "0.3"
        )
    started = [r.getMessage() for r in caplog.records if " on 127.0.0.1:" in r.getMessage()]
    assert [line.split(",")[0] for line in started] == [
        f"sim-cp-{n + 1:03d}: generic-ev-charger on 127.0.0.1:{base + n} unit 1" for n in range(3)
    ]


async def test_coils_and_discrete_inputs_read_and_write() -> None:
    async with SimulatorFleet(BITS_LIKE, 1, base_port=0, seed=2) as fleet:
        sim = fleet.charge_points[0]
        sim.set_status("charging")
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            assert (await client.read_discrete_inputs(5, count=1, device_id=UNIT)).bits[0] is True
            assert (await client.read_coils(0, count=1, device_id=UNIT)).bits[0] is False
            assert not (await client.write_coil(0, True, device_id=UNIT)).isError()
            assert (await client.read_coils(0, count=1, device_id=UNIT)).bits[0] is True
            assert [(w.register, w.value) for w in sim.last_writes] == [("charging_enabled", True)]
            refused = await client.read_discrete_inputs(9, count=1, device_id=UNIT)
            assert refused.isError() and refused.exception_code == ExcCodes.ILLEGAL_ADDRESS
            sim.set_status("available")
            assert (await client.read_discrete_inputs(5, count=1, device_id=UNIT)).bits[0] is False
        finally:
            client.close()


def test_session_scale_compresses_the_day_not_the_power() -> None:
    """The demo's compressed day (session_scale 0.01): sessions finish and faults come within
    minutes, while a charging car still draws real currents (the same as at full scale)."""
    scaled = [ChargePointBehaviour(random.Random(seed), session_scale=0.01, start_busy=False) for seed in range(8)]
    finished_at: list[float] = []
    faulted = False
    charging_power_w: list[float] = []
    for second in range(1, 301):
        for behaviour in scaled:
            for event in behaviour.tick(1.0):
                if event.kind == "session_finished":
                    finished_at.append(second)
                faulted = faulted or event.kind == "fault"
            if behaviour.status == OperatorStatus.CHARGING:
                charging_power_w.append(behaviour.power_w)
    assert finished_at and min(finished_at) <= 120, "no session of 8 chargers finished within 2 minutes"
    assert faulted, "no fault in 5 minutes of 8 chargers"
    # Real power: a car charges at 6..32 A on 1 or 3 phases of 230 V, i.e. 1.1..22 kW.
    assert charging_power_w and 1_000 < statistics.median(charging_power_w) < 23_000

    full_scale = ChargePointBehaviour(random.Random(0), start_busy=False)
    for _ in range(300):
        assert not [event for event in full_scale.tick(1.0) if event.kind == "session_finished"]
    with pytest.raises(ValueError, match="session_scale"):
        ChargePointBehaviour(random.Random(0), session_scale=0)
