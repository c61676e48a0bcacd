"""The simulator honours the profile's commands as the real chargers do, over real Modbus TCP.

Small hand-made profiles, one per way chargers take commands: KEBA (write-only setpoint, an
enable register), Schneider (a command register and a read-write setpoint), Mennekes (a
pause/continue register, a state register the model has no value for) and Alfen (a float32
setpoint, 0 A pauses). Each test writes what the poller writes and reads what it reads back.
"""

import logging
import math
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from django.core.management import call_command
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU

from gateway.choices import CommandAction, CommandStatus, OperatorStatus, PollGroup
from gateway.commands.execute import execute_command
from gateway.commands.messages import CommandMessage
from gateway.commands.queue import LoggedResults
from gateway.modbus.connection import ChargePointConnection
from gateway.modbus.planner import plan_reads
from gateway.profiles.codec import Value
from gateway.profiles.decode import decode_block, decode_register, to_telemetry_fields
from gateway.profiles.encode import encode_for_write
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.profiles.validate import profile_problems
from gateway.simulator.behaviour import ChargePointBehaviour
from gateway.simulator.processes import FleetPlan
from gateway.simulator.server import SimulatedChargePoint
from tests.ports import free_port_run

UNIT = 1
F32 = {"data_type": "float32", "length": 2}
U32 = {"data_type": "uint32", "length": 2}
CURRENTS = ("current_l1", "current_l2", "current_l3")


def reg(name: str, address: int, data_type: str = "uint16", **extra: object) -> dict:
    return {"name": name, "address": address, "data_type": data_type, "length": extra.pop("length", 1), **extra}


def profile(
    slug: str, registers: list[dict], rules: list[tuple[str, str, str, str]], commands: list[dict]
) -> ProfileSpec:
    """A consistent profile; rules are (register, code, IEC state, status)."""
    spec = ProfileSpec.from_dict(
        {
            "slug": slug,
            "name": slug,
            "registers": registers,
            "status_rules": [
                {"register": r, "code": c, "iec61851_state": iec, "status": status} for r, c, iec, status in rules
            ],
            "commands": commands,
        }
    )
    assert profile_problems(spec) == []
    return spec


def currents(base: int, step: int, **extra: object) -> list[dict]:
    return [reg(name, base + step * n, role=f"{name}_a", **extra) for n, name in enumerate(CURRENTS)]


# KEBA P30: the setpoint is write-only (5004, mA), the limit in force reads at 1100; 5014 0/1 disables/enables.
KEBA = profile(
    "cmd-keba",
    [
        reg("charging_state", 1000, **U32, enum={str(n): f"state {n}" for n in range(6)}),
        reg("cable_state", 1004, **U32, enum={"0": "no cable", "5": "ev", "7": "ev locked"}),
        *currents(1008, 2, **U32, scale=0.001),
        reg("active_power", 1020, **U32, scale=0.001, role="power_w"),
        reg("max_charging_current", 1100, **U32, unit="A", scale=0.001, role="current_limit_a"),
        reg("set_charging_current", 5004, access="w", unit="A", scale=0.001, write_min=6, write_max=32),
        reg("enable_charging_station", 5014, access="w", write_values=[0, 1]),
    ],
    [
        ("cable_state", "0", "A", "available"),
        ("charging_state", "3", "C", "charging"),
        ("charging_state", "2", "B", "suspended"),  # the usual form of suspended: served unless paused
        ("charging_state", "5", "B", "suspended"),
        ("charging_state", "1", "B", "preparing"),
    ],
    [
        {
            "action": "set_current_limit",
            "register": "set_charging_current",
            "min_value": 6,
            "max_value": 32,
            "verify_register": "max_charging_current",
            "tolerance": 0.001,
        },
        {
            "action": "pause",
            "register": "enable_charging_station",
            "value": 0,
            "verify_register": "charging_state",
            # 1 reads "preparing" with a vehicle plugged in: the charger shows 5 (interrupted)
            "verify_values": [1, 5],
        },
        {
            "action": "resume",
            "register": "enable_charging_station",
            "value": 1,
            "verify_register": "charging_state",
            "verify_values": [3],
        },
    ],
)
# Schneider EVlink Pro AC: set_command 7 suspends, 8 restarts; set_point is the read-write limit.
SCHNEIDER = profile(
    "cmd-schneider",
    [
        reg("ev_state", 1, enum={"2": "no ev", "3": "connected", "4": "suspended", "8": "charging"}),
        *currents(10, 2, **F32, byte_order="CDAB"),
        reg("active_power", 20, **F32, byte_order="CDAB", role="power_w"),
        reg("set_command", 4001, access="rw", write_values=[3, 7, 8, 9]),
        reg(
            "set_point",
            4004,
            access="rw",
            unit="A",
            role="current_limit_a",
            write_min=6,
            write_max=32,
            write_values=[0],
        ),
    ],
    [
        ("ev_state", "2", "A", "available"),
        ("ev_state", "3", "B", "preparing"),
        ("ev_state", "4", "B", "suspended"),
        ("ev_state", "8", "C", "charging"),
    ],
    [
        {"action": "set_current_limit", "register": "set_point", "min_value": 6, "max_value": 32},
        {"action": "pause", "register": "set_command", "value": 7, "verify_register": "ev_state", "verify_values": [4]},
        {
            "action": "resume",
            "register": "set_command",
            "value": 8,
            "verify_register": "ev_state",
            "verify_values": [8],
        },
    ],
)
# Mennekes AMTRON HCC3: change_charge_state 1 pauses, 2 continues; amtron_state 4 = paused, 3 = charging.
MENNEKES = profile(
    "cmd-mennekes",
    [
        reg("cp_signal_state", 770, function="input", enum={str(n): f"state {n}" for n in range(1, 9)}),
        reg("amtron_state", 773, function="input", enum={str(n): f"state {n}" for n in range(7)}),
        *currents(790, 1, function="input", scale=0.01),
        reg("active_power", 783, **U32, function="input", byte_order="CDAB", role="power_w"),
        reg("customer_current_limitation", 1024, access="rw", unit="A", write_min=6, write_max=32, write_values=[0]),
        reg("change_charge_state", 1025, access="w", write_values=[1, 2, 3, 4]),
    ],
    [
        ("amtron_state", "6", "F", "faulted"),
        ("cp_signal_state", "1", "A", "available"),
        ("cp_signal_state", "3", "B", "preparing"),
        ("cp_signal_state", "4", "B", "suspended"),
        ("cp_signal_state", "6", "C", "charging"),
    ],
    [
        {"action": "set_current_limit", "register": "customer_current_limitation", "min_value": 6, "max_value": 32},
        {
            "action": "pause",
            "register": "change_charge_state",
            "value": 1,
            "verify_register": "amtron_state",
            "verify_values": [4],
        },
        {
            "action": "resume",
            "register": "change_charge_state",
            "value": 2,
            "verify_register": "amtron_state",
            "verify_values": [3],
        },
    ],
)
# ABB Terra AC: a write-only uint32 setpoint in mA, 0 A pauses; 4022h reads back what was set.
ABB = profile(
    "cmd-abb",
    [
        reg("charging_state", 16396, enum={str(n): f"state {n}" for n in range(5)}),
        reg("charging_current_limit", 16398, **U32, scale=0.001, unit="A", role="current_limit_a"),
        *currents(16400, 2, **U32, scale=0.001),
        reg("active_power", 16412, **U32, role="power_w"),
        reg("current_limit_set_by_modbus", 16418, **U32, scale=0.001, unit="A"),
        reg(
            "set_charging_current_limit",
            16640,
            **U32,
            scale=0.001,
            unit="A",
            access="w",
            write_min=6,
            write_max=32,
            write_values=[0],
        ),
    ],
    [
        ("charging_state", "0", "A", "available"),
        ("charging_state", "1", "B", "preparing"),
        ("charging_state", "2", "B", "suspended"),
        ("charging_state", "4", "C", "charging"),
    ],
    [
        {
            "action": "set_current_limit",
            "register": "set_charging_current_limit",
            "min_value": 6,
            "max_value": 32,
            "verify_register": "current_limit_set_by_modbus",
            "tolerance": 0.001,
        },
        {
            "action": "pause",
            "register": "set_charging_current_limit",
            "value": 0,
            "verify_register": "current_limit_set_by_modbus",
        },
        {
            "action": "resume",
            "register": "set_charging_current_limit",
            "verify_register": "current_limit_set_by_modbus",
            "tolerance": 0.001,
        },
    ],
)
# Alfen Eve: a float32 setpoint (one FC16 write), 0 A pauses, the limit applied reads at 1206.
ALFEN = profile(
    "cmd-alfen",
    [
        *currents(320, 2, **F32),
        reg("active_power", 344, **F32, role="power_w"),
        reg("mode3_state", 1201, enum={"0": "A", "1": "B2", "2": "C2"}),
        reg("actual_applied_max_current", 1206, **F32, unit="A", role="current_limit_a"),
        reg("max_current_setpoint", 1210, **F32, access="rw", unit="A", write_min=6, write_max=32, write_values=[0]),
    ],
    [
        ("mode3_state", "0", "A", "available"),
        ("mode3_state", "1", "B", "suspended"),
        ("mode3_state", "2", "C", "charging"),
    ],
    [
        {
            "action": "set_current_limit",
            "register": "max_current_setpoint",
            "min_value": 6,
            "max_value": 32,
            "tolerance": 0.01,
        },
        {
            "action": "pause",
            "register": "max_current_setpoint",
            "value": 0,
            "verify_register": "actual_applied_max_current",
            "verify_value": 0,
        },
        {
            "action": "resume",
            "register": "max_current_setpoint",
            "verify_register": "actual_applied_max_current",
            "tolerance": 0.01,
        },
    ],
)
PROFILES = [KEBA, SCHNEIDER, MENNEKES, ABB, ALFEN]
LEAN = [False, True]


class Charger:
    """A simulated charger mid-session and a Modbus TCP client doing what the poller does."""

    def __init__(self, sim: SimulatedChargePoint, client: AsyncModbusTcpClient) -> None:
        self.sim = sim
        self.spec = sim.profile
        self.client = client

    async def command(self, action: str, value: float | None = None) -> ModbusPDU:
        """Write the command's register as the poller does: the command's value, else `value`."""
        command = self.spec.command(action)
        assert command is not None
        register = self.spec.register(command.register)
        written = command.value if command.value is not None else value
        assert written is not None
        words = encode_for_write(register, written)
        if len(words) == 1:
            return await self.client.write_register(register.address, words[0], device_id=UNIT)
        return await self.client.write_registers(register.address, words, device_id=UNIT)

    async def read(self, name: str) -> Value:
        """One register, decoded as the poller decodes it."""
        register = self.spec.register(name)
        read = self.client.read_input_registers if register.function == "input" else self.client.read_holding_registers
        response = await read(register.address, count=register.count, device_id=UNIT)
        assert not response.isError(), response
        return decode_register(register, response.registers)

    async def verified(self, action: str) -> Value:
        """What the command's verify register reads."""
        command = self.spec.command(action)
        assert command is not None
        return await self.read(command.verify_register or command.register)

    async def status(self) -> str:
        values = {rule.register: await self.read(rule.register) for rule in self.spec.status_rules}
        return to_telemetry_fields(self.spec, values).status

    async def currents_a(self) -> list[float]:
        return [float(await self.read(name)) for name in CURRENTS]


@pytest_asyncio.fixture(
    params=[(spec, lean) for spec in PROFILES for lean in LEAN],
    ids=lambda p: f"{p[0].slug}-{'lean' if p[1] else 'pymodbus'}",
)
async def charger(request: pytest.FixtureRequest) -> AsyncIterator[Charger]:
    """A charging simulated charger of each profile, on each server, with a connected client."""
    spec, lean = request.param
    # Mid-session, never faulting; no tick task: the tests advance time themselves.
    behaviour = ChargePointBehaviour(random.Random(7), start_busy=True, mean_fault_interval_s=math.inf)
    sim = SimulatedChargePoint("cmd-cp", spec, behaviour, unit_id=UNIT, lean=lean)
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=5, retries=0)
    try:
        assert await client.connect()
        charger = Charger(sim, client)
        assert await charger.status() == OperatorStatus.CHARGING
        assert max(await charger.currents_a()) > 12  # every simulated car draws at least 16 A unlimited
        yield charger
    finally:
        client.close()
        await sim.stop()


async def test_limit_write_caps_the_currents_and_reads_back(charger: Charger) -> None:
    power_before = float(await charger.read("active_power"))
    assert not (await charger.command(CommandAction.SET_CURRENT_LIMIT, 10)).isError()
    assert await charger.verified(CommandAction.SET_CURRENT_LIMIT) == pytest.approx(10, abs=0.01)
    for _ in range(5):  # and it holds while time passes
        measured = await charger.currents_a()
        assert 0 < max(measured) <= 10
        assert await charger.status() == OperatorStatus.CHARGING
        charger.sim.tick(2.0)
    assert float(await charger.read("active_power")) < power_before
    assert charger.sim.last_writes[-1].value == pytest.approx(10)


async def test_pause_then_resume_at_the_limit_before(charger: Charger) -> None:
    spec = charger.spec
    assert not (await charger.command(CommandAction.SET_CURRENT_LIMIT, 10)).isError()

    assert not (await charger.command(CommandAction.PAUSE)).isError()
    for _ in range(3):
        assert await charger.status() == OperatorStatus.SUSPENDED
        assert await charger.currents_a() == [0, 0, 0]
        assert float(await charger.read("active_power")) == 0
        pause = spec.command(CommandAction.PAUSE)
        assert pause is not None
        # No verify value: the value written, 0 A.
        expected = pause.verify_values or (0 if pause.verify_value is None else pause.verify_value,)
        assert await charger.verified(CommandAction.PAUSE) in expected
        charger.sim.tick(2.0)

    # A resume with no value of its own writes the limit the poller holds (10 A), as the poller does.
    assert not (await charger.command(CommandAction.RESUME, 10)).isError()
    assert await charger.status() == OperatorStatus.CHARGING
    assert 0 < max(await charger.currents_a()) <= 10
    assert await charger.verified(CommandAction.SET_CURRENT_LIMIT) == pytest.approx(10, abs=0.01)
    resume = spec.command(CommandAction.RESUME)
    assert resume is not None
    assert await charger.verified(CommandAction.RESUME) == pytest.approx(
        resume.verify_values[0] if resume.verify_values else 10, abs=0.01
    )


async def test_ignored_writes_are_acknowledged_and_change_nothing(charger: Charger) -> None:
    sim = charger.sim
    limit_before = await charger.verified(CommandAction.SET_CURRENT_LIMIT)
    assert limit_before == pytest.approx(32)  # the charger's own limit, written or not
    sim.set_ignore_writes(True)
    for action, value in ((CommandAction.SET_CURRENT_LIMIT, 10), (CommandAction.PAUSE, None)):
        response = await charger.command(action, value)
        assert not response.isError(), response  # acknowledged: no Modbus exception
    assert [w.value for w in sim.last_writes] == pytest.approx([10, spec_value(charger.spec, CommandAction.PAUSE)])
    # The read-back mismatches: the limit and the state are what they were.
    assert await charger.verified(CommandAction.SET_CURRENT_LIMIT) == limit_before != pytest.approx(10)
    assert await charger.status() == OperatorStatus.CHARGING
    assert max(await charger.currents_a()) > 10

    sim.set_ignore_writes(False)  # a charger that honours writes again
    assert not (await charger.command(CommandAction.SET_CURRENT_LIMIT, 10)).isError()
    assert await charger.verified(CommandAction.SET_CURRENT_LIMIT) == pytest.approx(10, abs=0.01)


async def test_a_write_out_of_range_is_refused(charger: Charger) -> None:
    command = charger.spec.command(CommandAction.SET_CURRENT_LIMIT)
    assert command is not None
    register = charger.spec.register(command.register)
    limit_before = await charger.verified(CommandAction.SET_CURRENT_LIMIT)
    for ignoring in (False, True):  # a charger ignoring writes still checks them
        charger.sim.set_ignore_writes(ignoring)
        for amps in (40, 3):
            words = encode_for_write(register, amps)  # past the profile's check, straight to the wire
            response = await charger.client.write_registers(register.address, words, device_id=UNIT)
            assert response.isError() and response.exception_code == ExcCodes.ILLEGAL_VALUE
    assert charger.sim.last_writes == []
    assert await charger.verified(CommandAction.SET_CURRENT_LIMIT) == limit_before


def spec_value(spec: ProfileSpec, action: str) -> float:
    command = spec.command(action)
    assert command is not None and command.value is not None
    return command.value


def test_ignore_writes_reaches_every_charge_point_of_a_plan() -> None:
    fleet = FleetPlan((KEBA, ALFEN), 3, 0, ignore_writes=True).build_fleet()
    assert [cp.ignore_writes for cp in fleet.charge_points] == [True, True, True]
    assert not any(cp.ignore_writes for cp in FleetPlan((KEBA,), 2, 0).build_fleet().charge_points)


@pytest.mark.django_db
def test_simulate_ignore_writes_flag(generic_profile: object, caplog: pytest.LogCaptureFixture) -> None:
    base = free_port_run(1)
    with caplog.at_level(logging.INFO, logger="gateway"):
        call_command("simulate", "--count", "1", "--base-port", str(base), "--ignore-writes", "--run-for", "0.2")
    assert any("ignores them" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --- the shipped profiles, carried out by the poller's own execute_command ----------------------
SHIPPED = [read_spec_file(path) for path in shipped_profile_files()]


async def no_settle(seconds: float) -> bool:
    """The simulator applies a write at once: no need to wait the vendor's settle time."""
    return False


async def read_fields(connection: ChargePointConnection, spec: ProfileSpec) -> tuple[str, list[float]]:
    """The status and phase currents the poller would see (every planned read)."""
    values: dict[str, Value] = {}
    for request in plan_reads(spec, (PollGroup.FAST, PollGroup.SLOW)):
        decoded, errors = decode_block(request.registers, request.address, list(await connection.read(request)))
        assert not errors
        values.update(decoded)
    fields = to_telemetry_fields(spec, values)
    currents = [fields.values.get(f"current_l{n}_a") for n in (1, 2, 3)]
    return fields.status, [float(current) for current in currents if current is not None]


@pytest.mark.parametrize("spec", SHIPPED, ids=[spec.slug for spec in SHIPPED])
async def test_shipped_profiles_commands_are_verified_on_the_simulator(spec: ProfileSpec) -> None:
    behaviour = ChargePointBehaviour(random.Random(7), start_busy=True, mean_fault_interval_s=math.inf)
    sim = SimulatedChargePoint("cmd-cp", spec, behaviour)
    await sim.start()
    connection = ChargePointConnection("127.0.0.1", sim.port, sim.unit_id, timeout_s=5)
    held_limit_a: float | None = None
    steps = (
        (CommandAction.SET_CURRENT_LIMIT, 10.0, OperatorStatus.CHARGING),
        (CommandAction.PAUSE, None, OperatorStatus.SUSPENDED),
        (CommandAction.RESUME, None, OperatorStatus.CHARGING),
    )
    try:
        await connection.ensure_connected()
        assert (await read_fields(connection, spec))[0] == OperatorStatus.CHARGING
        done = []
        for action, value, status in steps:
            command = spec.command(action)
            if command is None or not command.supported:
                continue
            now = datetime.now(UTC)
            message = CommandMessage(
                uuid.uuid4().hex, "cp-1", "lab", action, value, "operator", now, now + timedelta(seconds=30)
            )
            result = await execute_command(
                connection,
                spec,
                message,
                hooks=LoggedResults(),
                poller="test",
                held_limit_a=held_limit_a,
                connected=True,
                settle=no_settle,
            )
            assert result.status == CommandStatus.APPLIED, f"{action}: {result.reason}"
            held_limit_a = value if value is not None else held_limit_a
            shown, currents = await read_fields(connection, spec)
            assert shown == status, action
            if status == OperatorStatus.SUSPENDED:
                assert all(current == 0 for current in currents)
            else:
                assert all(current <= 10 for current in currents)
            done.append(action)
        assert CommandAction.SET_CURRENT_LIMIT in done
    finally:
        await connection.close()
        await sim.stop()
