"""The simulator impersonates every shipped charger: a real Modbus client reads back what was pinned.

Each profile is read exactly as the poller reads it (its planned fast and slow reads, on each read's
unit id) and decoded with the poller's own decoder, for every status its rules can express; then
its current-limit and heartbeat writes are tried.
"""

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU

from gateway.choices import Access, CommandAction, DataType, Function, OperatorStatus, PollGroup, Role
from gateway.modbus.connection import ChargePointConnection
from gateway.modbus.planner import ReadRequest, plan_reads
from gateway.profiles.codec import Value
from gateway.profiles.decode import decode_block, to_telemetry_fields
from gateway.profiles.encode import WriteRangeError, check_write_range, encode_checked_write, encode_for_write
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.simulator.behaviour import Phase
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.server import SimulatedChargePoint
from tests.conftest import wait_for

SHIPPED_FILES = shipped_profile_files()
# Values every charger can hold (positive, within 16-bit registers, off the rounding midpoints).
PINNED: dict[str, float] = {
    Role.POWER_W: 7_360,
    Role.CURRENT_L1_A: 16.01,
    Role.CURRENT_L2_A: 15.52,
    Role.CURRENT_L3_A: 14.03,
    Role.VOLTAGE_L1_V: 229.7,
    Role.VOLTAGE_L2_V: 231.2,
    Role.VOLTAGE_L3_V: 228.9,
    Role.ENERGY_TOTAL_WH: 1_234_567,
    Role.SESSION_ENERGY_WH: 4_321,
    Role.TEMPERATURE_C: 35.4,
    Role.CURRENT_LIMIT_A: 20.4,
    Role.ERROR_CODE: 16,
}


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[path.stem for path in SHIPPED_FILES])
async def test_simulator_impersonates_shipped_profile(path: Path) -> None:
    await check_impersonation(read_spec_file(path))


async def test_mixed_fleet_serves_each_profile_on_its_own_port_and_unit() -> None:
    specs = [read_spec_file(path) for path in SHIPPED_FILES]
    count = len(specs) + 1  # the first profile comes round again
    async with SimulatorFleet.mixed(specs, count, base_port=0, seed=8, tick_s=0.05) as fleet:
        assert len({cp.port for cp in fleet.charge_points}) == count
        for index, sim in enumerate(fleet.charge_points):
            spec = specs[index % len(specs)]
            assert sim.profile is spec and sim.unit_id == spec.default_unit_id
            status, iec_state = first_pair(spec)
            sim.set_status(status, iec_state)
            pinned = pin_values(sim, spec)
            async with modbus_client(sim) as client:
                fields = to_telemetry_fields(spec, await read_profile(client, sim, spec))
            assert (fields.status, fields.iec61851_state) == (status, iec_state), spec.slug
            assert_values(spec, pinned, fields.values)


# --- the check, shared with the hand-made quirk profiles of test_simulator.py ---------------------
async def check_impersonation(spec: ProfileSpec) -> None:
    """Pinned values and every status read back, then writes and refusals, against one charger."""
    expected_pairs = {(rule.status, rule.iec61851_state) for rule in spec.status_rules}
    assert expected_pairs, f"{spec.slug} has no status rules"
    async with SimulatorFleet(spec, 1, base_port=0, speedup=300, seed=3, tick_s=0.05) as fleet:
        sim = fleet.charge_points[0]
        sim.behaviour.mean_fault_interval_s = math.inf
        assert set(sim.image.status.pairs) == expected_pairs, "some status rules can never match"
        async with modbus_client(sim) as client:
            pinned = pin_values(sim, spec)
            for status, iec_state in sorted(expected_pairs):
                sim.set_status(status, iec_state)
                decoded = await read_profile(client, sim, spec)
                fields = to_telemetry_fields(spec, decoded)
                assert (fields.status, fields.iec61851_state) == (status, iec_state)
                assert not fields.problems
                assert_values(spec, pinned, fields.values)
            if spec.simulator.get("nan_unavailable"):  # what the model lacks reads 'not available'
                lacking = [r.name for r in spec.registers if r.name in decoded and undriven_number(r, spec)]
                assert lacking and all(decoded[name] is None for name in lacking), lacking
            await check_read_refusals(client, sim, spec)
            sim.clear_overrides()
            await check_limit_writes(client, sim, spec)
            await check_heartbeats(client, sim, spec)


def pin_values(sim: SimulatedChargePoint, spec: ProfileSpec) -> dict[str, float]:
    """Pin every telemetry role the profile reads (status registers stay the status's)."""
    pinned = {}
    for role, value in PINNED.items():
        register = spec.register_for(role)
        if register is not None and register.readable and register.name not in spec.status_registers:
            sim.set_value(role, value)
            pinned[role] = value
    return pinned


def assert_values(spec: ProfileSpec, pinned: dict[str, float], values: dict[str, float | int | None]) -> None:
    for role, value in pinned.items():
        register = spec.register_for(role)
        assert register is not None
        assert values[role] == pytest.approx(value, rel=1e-6, abs=resolution(register)), role
    if Role.POWER_W in spec.derived:
        phases = [(values.get(f"current_l{n}_a"), values.get(f"voltage_l{n}_v")) for n in (1, 2, 3)]
        power = sum(i * v for i, v in phases if i is not None and v is not None)
        assert values[Role.POWER_W] == pytest.approx(power, abs=1)


def undriven_number(register: RegisterSpec, spec: ProfileSpec) -> bool:
    """A number no role, enum, status rule or identity drives, with a way to say 'not available'."""
    has_marker = register.unavailable is not None or register.data_type in (DataType.FLOAT32, DataType.FLOAT64)
    driven = register.role or register.enum or register.writable or register.name in spec.status_registers
    return has_marker and not driven and "serial" not in register.name


def resolution(register: RegisterSpec) -> float:
    """Half a raw step: what rounding to the register's scale may cost."""
    return 1e-3 if register.data_type in (DataType.FLOAT32, DataType.FLOAT64) else abs(register.scale) / 2 + 1e-9


def first_pair(spec: ProfileSpec) -> tuple[str, str]:
    rule = spec.status_rules[0]
    return rule.status, rule.iec61851_state


# --- Modbus -----------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def modbus_client(sim: SimulatedChargePoint) -> AsyncIterator[AsyncModbusTcpClient]:
    """A connected pymodbus client for one simulated charge point."""
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def read_request(client: AsyncModbusTcpClient, sim: SimulatedChargePoint, request: ReadRequest) -> ModbusPDU:
    read = {
        Function.HOLDING: client.read_holding_registers,
        Function.INPUT: client.read_input_registers,
        Function.COIL: client.read_coils,
        Function.DISCRETE_INPUT: client.read_discrete_inputs,
    }[request.function]
    unit_id = sim.unit_id if request.unit_id is None else request.unit_id
    return await read(request.address, count=request.count, device_id=unit_id)


async def read_profile(client: AsyncModbusTcpClient, sim: SimulatedChargePoint, spec: ProfileSpec) -> dict[str, Value]:
    """Every planned read of the fast and the slow group, decoded as the poller decodes them."""
    values: dict[str, Value] = {}
    for group in (PollGroup.FAST, PollGroup.SLOW):
        for request in plan_reads(spec, (group,)):
            response = await read_request(client, sim, request)
            assert not response.isError(), (request, response)
            bits = request.function in (Function.COIL, Function.DISCRETE_INPUT)
            words = response.bits[: request.count] if bits else response.registers
            decoded, errors = decode_block(request.registers, request.address, words)
            assert not errors, errors
            values.update(decoded)
    return values


async def write(
    client: AsyncModbusTcpClient, sim: SimulatedChargePoint, register: RegisterSpec, words: list[int]
) -> ModbusPDU:
    unit_id = sim.unit_id if register.unit_id is None else register.unit_id
    if len(words) == 1:
        return await client.write_register(register.address, words[0], device_id=unit_id)
    return await client.write_registers(register.address, words, device_id=unit_id)


async def check_read_refusals(client: AsyncModbusTcpClient, sim: SimulatedChargePoint, spec: ProfileSpec) -> None:
    """Write-only registers, wrong read sizes, and the other function where the profile mirrors."""
    planned = plan_reads(spec, (PollGroup.FAST,)) + plan_reads(spec, (PollGroup.SLOW,))
    in_a_read = {
        (sim.unit_id if r.unit_id is None else r.unit_id, r.function, a)
        for r in planned + plan_reads(spec, (PollGroup.FAST, PollGroup.SLOW))
        for a in range(r.address, r.address + r.count)
    }
    for register in spec.registers:
        unit_id = sim.unit_id if register.unit_id is None else register.unit_id
        if register.access == Access.WRITE and (unit_id, register.function, register.address) not in in_a_read:
            request = ReadRequest(register.function, register.address, register.count, (register,), register.unit_id)
            response = await read_request(client, sim, request)
            assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_ADDRESS, register.name
    for request in planned:
        if spec.fixed_read_size and request.function in (Function.HOLDING, Function.INPUT):
            for count in (1, spec.fixed_read_size + 1):
                odd = ReadRequest(request.function, request.address, count, request.registers, request.unit_id)
                response = await read_request(client, sim, odd)
                assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_ADDRESS
        if spec.simulator.get("mirror_functions") and request.function in (Function.HOLDING, Function.INPUT):
            other = Function.INPUT if request.function == Function.HOLDING else Function.HOLDING
            mirrored = ReadRequest(other, request.address, request.count, request.registers, request.unit_id)
            first, second = await read_request(client, sim, request), await read_request(client, sim, mirrored)
            assert not second.isError(), mirrored
            assert first.registers == second.registers  # every value is pinned or constant here


def limit_register(spec: ProfileSpec) -> RegisterSpec | None:
    """Where a limit is written: the set_current_limit command's register, else a writable current_limit_a one."""
    command = spec.command(CommandAction.SET_CURRENT_LIMIT)
    if command is not None and command.supported:
        return spec.register(command.register)
    return spec.register_for(Role.CURRENT_LIMIT_A)


async def check_limit_writes(client: AsyncModbusTcpClient, sim: SimulatedChargePoint, spec: ProfileSpec) -> None:
    """A limit within range is taken and honoured; outside it is refused; multi-register halves too."""
    target = limit_register(spec)
    assert target is not None and target.writable, f"{spec.slug} has no current setpoint"
    sim.connect_vehicle(phases=3)  # no-op if it is already in a session
    await wait_for(lambda: sim.behaviour.phase == Phase.CHARGING, what=f"{spec.slug} charging")
    low = 0.0 if target.write_min is None else target.write_min
    limit = min(max(10.0, low), 32.0 if target.write_max is None else target.write_max)
    response = await write(client, sim, target, encode_for_write(target, limit))
    assert not response.isError(), response
    assert sim.behaviour.max_current_a == pytest.approx(limit)
    assert sim.last_writes[-1].register == target.name
    for _ in range(3):
        fields = to_telemetry_fields(spec, await read_profile(client, sim, spec))
        assert fields.status == OperatorStatus.CHARGING
        currents = [fields.values[f"current_l{n}_a"] for n in (1, 2, 3)]
        assert all(current is None or current <= limit + resolution(target) for current in currents)

    refused_values = refused(target)
    assert refused_values, f"{spec.slug}: {target.name} has no write range"
    for value in refused_values:
        # A client that skips check_write_range: the charger itself answers ILLEGAL DATA VALUE.
        response = await write(client, sim, target, encode_for_write(target, value))
        assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_VALUE, value
    assert sim.behaviour.max_current_a == pytest.approx(limit)

    if target.count > 1:  # half of a multi-register value (Alfen: must be one FC16 request)
        unit_id = sim.unit_id if target.unit_id is None else target.unit_id
        words = encode_for_write(target, limit)
        response = await client.write_register(target.address, words[0], device_id=unit_id)
        assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_ADDRESS

    if allows(target, 0):  # 0 A pauses (all but KEBA P30, which pauses with 5014)
        response = await write(client, sim, target, encode_for_write(target, 0))
        assert not response.isError(), response
        assert sim.behaviour.status == OperatorStatus.SUSPENDED
        fields = to_telemetry_fields(spec, await read_profile(client, sim, spec))
        assert [fields.values[f"current_l{n}_a"] or 0 for n in (1, 2, 3)] == [0, 0, 0]


def allows(register: RegisterSpec, value: float) -> bool:
    try:
        check_write_range(register, value)
    except WriteRangeError:
        return False
    return True


def refused(register: RegisterSpec) -> list[float]:
    """Values just outside what the profile allows that the register's type can still carry."""
    candidates = [register.write_min - 1 if register.write_min is not None else None]
    candidates.append(register.write_max + 1 if register.write_max is not None else None)
    candidates += [value + 1 for value in register.write_values] + [value - 1 for value in register.write_values]
    values = []
    for value in candidates:
        if value is None or allows(register, value) or value in values:
            continue
        try:
            encode_for_write(register, value)
        except (WriteRangeError, ValueError, OverflowError):
            continue  # the type cannot carry it (e.g. -1 in a uint16): no client could send it
        values.append(value)
    return values


async def check_heartbeats(client: AsyncModbusTcpClient, sim: SimulatedChargePoint, spec: ProfileSpec) -> None:
    for heartbeat in spec.heartbeats:
        register = spec.register(heartbeat.register)
        value = heartbeat.value
        if value is None:
            source = spec.register(str(heartbeat.value_from))
            value = (await read_profile(client, sim, spec))[source.name]
        before = sim.heartbeats_received.get(register.name, 0)
        response = await write(client, sim, register, encode_for_write(register, value))
        assert not response.isError(), (heartbeat, response)
        assert sim.heartbeats_received[register.name] == before + 1
        assert register.name in sim.last_heartbeat_at


# --- refused writes never reach the wire ---------------------------------------------------------

# Writable registers per profile: the reference's read-write and write-only rows (Alfen's SCN L2/L3
# sit beside L1 in the vendor table), and the generic map's setpoint.
EXPECTED_WRITABLE = {
    "alfen-eve": {
        "max_current_setpoint",
        "charge_phases",
        "scn_max_current_l1",
        "scn_max_current_l2",
        "scn_max_current_l3",
    },
    "abb-terra-ac": {
        "set_charging_current_limit",
        "lock_unlock_socket_cable",
        "start_stop_session",
        "set_communication_timeout",
        "set_fallback_limit",
    },
    "keba-p30": {
        "set_charging_current",
        "set_energy",
        "unlock_plug",
        "enable_charging_station",
        "set_failsafe_current",
        "set_failsafe_timeout",
        "set_failsafe_persist",
        "set_phase_switch_source",
        "trigger_phase_switch",
    },
    "webasto-next": {
        "safe_current",
        "com_timeout",
        "set_charge_power",
        "set_charge_current",
        "start_cancel_session",
        "life_bit",
    },
    "vestel-evc04": {"phase_switch", "failsafe_current", "failsafe_timeout", "charging_current", "alive_register"},
    "schneider-evlink-pro-ac": {
        "lifebit",
        "set_command",
        "set_point",
        "degraded_set_point_mono",
        "degraded_set_point_tri",
    },
    "mennekes-amtron-hcc3": {"customer_current_limitation", "change_charge_state"},
    "generic-ev-charger": {"max_current"},
}
# Heartbeat registers per profile (reference notes: ABB and Mennekes need none).
EXPECTED_HEARTBEATS = {
    "alfen-eve": ["max_current_setpoint"],
    "abb-terra-ac": [],
    "keba-p30": ["set_failsafe_timeout"],
    "webasto-next": ["life_bit"],
    "vestel-evc04": ["alive_register"],
    "schneider-evlink-pro-ac": ["lifebit"],
    "mennekes-amtron-hcc3": [],
    "generic-ev-charger": [],
}


def test_every_shipped_profile_is_checked() -> None:
    assert sorted(path.stem for path in SHIPPED_FILES) == sorted(EXPECTED_WRITABLE) == sorted(EXPECTED_HEARTBEATS)
    assert len(SHIPPED_FILES) == 8


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[path.stem for path in SHIPPED_FILES])
def test_heartbeats_are_the_documented_ones(path: Path) -> None:
    spec = read_spec_file(path)
    assert [heartbeat.register for heartbeat in spec.heartbeats] == EXPECTED_HEARTBEATS[spec.slug]


def permissive_twin(spec: ProfileSpec) -> ProfileSpec:
    """The same charger with every register writable and no write range: it takes whatever reaches it,
    so a refused write that got onto the wire would show in its last_writes."""
    registers = tuple(
        dataclasses.replace(reg, access=Access.READ_WRITE, write_min=None, write_max=None, write_values=())
        for reg in spec.registers
    )
    return dataclasses.replace(spec, registers=registers, heartbeats=())


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[path.stem for path in SHIPPED_FILES])
async def test_refused_writes_never_reach_the_wire(path: Path) -> None:
    """Out-of-range and read-only writes through the product's write path: the charger receives nothing."""
    spec = read_spec_file(path)
    writable = [reg for reg in spec.registers if reg.writable]
    read_only = [reg for reg in spec.registers if not reg.writable]
    assert {reg.name for reg in writable} == EXPECTED_WRITABLE[spec.slug]
    assert read_only, spec.slug
    attempts = [(reg, value) for reg in writable for value in [*refused(reg), math.nan]]
    attempts += [(reg, 1) for reg in read_only]
    assert {reg.name for reg, _ in attempts} == {reg.name for reg in spec.registers}

    async with SimulatorFleet(permissive_twin(spec), 1, base_port=0, seed=4) as fleet:
        sim = fleet.charge_points[0]
        connection = ChargePointConnection("127.0.0.1", sim.port, sim.unit_id, timeout_s=2)
        await connection.ensure_connected()
        try:
            for register, value in attempts:
                with pytest.raises(WriteRangeError):
                    await connection.write_registers(
                        register.address, encode_checked_write(register, value), register.unit_id
                    )
            assert sim.last_writes == [], sim.last_writes
            # Positive control: an allowed value on the same path does arrive.
            target = limit_register(spec)
            await connection.write_registers(target.address, encode_checked_write(target, 10), target.unit_id)
            assert [(write.register, write.value) for write in sim.last_writes] == [(target.name, pytest.approx(10))]
        finally:
            await connection.close()
