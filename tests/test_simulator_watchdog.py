"""Simulated chargers fall back to their failsafe current when their watchdog lapses, as the vendors document.

Ground truth: ../shared/reference/charger_register_maps.json (quirks "Watchdog" and the failsafe
registers of KEBA, Webasto, Vestel, ABB, Schneider). Each test talks Modbus TCP to a real simulated
charger; a test clock moves the watchdog's time on so no test waits for a vendor timeout.
"""

import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient

from gateway.choices import CommandAction
from gateway.profiles.codec import Value
from gateway.profiles.decode import decode_register
from gateway.profiles.encode import encode_for_write
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.profiles.validate import profile_problems
from gateway.simulator.behaviour import ChargePointBehaviour
from gateway.simulator.server import SimulatedChargePoint

U32 = {"data_type": "uint32", "length": 2}


def reg(name: str, address: int, data_type: str = "uint16", **extra: Any) -> dict:
    return {"name": name, "address": address, "data_type": data_type, "length": extra.pop("length", 1), **extra}


def currents(base: int, step: int, **extra: Any) -> list[dict]:
    return [reg(f"current_l{n + 1}", base + step * n, role=f"current_l{n + 1}_a", **extra) for n in range(3)]


def charger_profile(slug: str, registers: list[dict], commands: list[dict], heartbeats: list[dict]) -> ProfileSpec:
    """A charger with a status register (0 available, 1 charging, 2 suspended) and the given extras."""
    spec = ProfileSpec.from_dict(
        {
            "slug": slug,
            "name": slug,
            "registers": [reg("state", 1, enum={"0": "idle", "1": "charging", "2": "suspended"}), *registers],
            "status_rules": [
                {"register": "state", "code": "0", "iec61851_state": "A", "status": "available"},
                {"register": "state", "code": "1", "iec61851_state": "C", "status": "charging"},
                {"register": "state", "code": "2", "iec61851_state": "B", "status": "suspended"},
            ],
            "commands": commands,
            "heartbeats": heartbeats,
        }
    )
    assert profile_problems(spec) == []
    return spec


def limit_commands(register: str, verify: str = "") -> list[dict]:
    return [
        {
            "action": "set_current_limit",
            "register": register,
            "min_value": 6,
            "max_value": 32,
            "verify_register": verify,
        },
        {"action": "pause", "register": register, "value": 0, "verify_register": verify},
        {"action": "resume", "register": register, "verify_register": verify},
    ]


# KEBA P30 [keba_rust, evcc_keba]: 5016 failsafe current in mA (read at 1600), 5018 timeout in s (read at
# 1602, 0 = disabled), both write-only; the EMS rewrites 5018 as its heartbeat.
KEBA = charger_profile(
    "wd-keba",
    [
        *currents(1008, 2, **U32, scale=0.001),
        reg("max_charging_current", 1100, **U32, scale=0.001, unit="A", role="current_limit_a"),
        reg("failsafe_current", 1600, **U32, scale=0.001, unit="A"),
        reg("failsafe_timeout", 1602, **U32, unit="s"),
        reg(
            "set_charging_current", 5004, access="w", scale=0.001, unit="A", write_min=6, write_max=32, write_values=[0]
        ),
        reg(
            "set_failsafe_current", 5016, access="w", scale=0.001, unit="A", write_min=6, write_max=63, write_values=[0]
        ),
        reg("set_failsafe_timeout", 5018, access="w", unit="s", write_min=10, write_max=600, write_values=[0]),
    ],
    [
        *limit_commands("set_charging_current", "max_charging_current"),
        {
            "action": "set_failsafe_current",
            "register": "set_failsafe_current",
            "verify_register": "failsafe_current",
            "min_value": 0,
            "max_value": 32,
        },
        {
            "action": "set_failsafe_timeout",
            "register": "set_failsafe_timeout",
            "verify_register": "failsafe_timeout",
            "min_value": 0,
            "max_value": 600,
        },
    ],
    [{"register": "set_failsafe_timeout", "interval_s": 10, "value_from": "failsafe_timeout"}],
)
# Webasto NEXT [webasto_doc]: 2000 safe current and 2002 com timeout (read-write), life bit 6000.
WEBASTO = charger_profile(
    "webasto-next",  # the shipped slug: the vendor's defaults apply
    [
        *currents(1008, 2),
        reg(
            "charge_current",
            5004,
            access="rw",
            unit="A",
            role="current_limit_a",
            write_min=6,
            write_max=32,
            write_values=[0],
        ),
        reg("safe_current", 2000, access="rw", unit="A", write_min=6, write_max=32),
        reg("com_timeout", 2002, access="rw", unit="s", write_min=1, write_max=65535),
        reg("life_bit", 6000, access="rw", write_values=[1]),
    ],
    [
        *limit_commands("charge_current"),
        {"action": "set_failsafe_current", "register": "safe_current", "min_value": 6, "max_value": 32},
        {"action": "set_failsafe_timeout", "register": "com_timeout", "min_value": 1, "max_value": 65535},
    ],
    [{"register": "life_bit", "interval_s": 5, "value": 1}],
)


def abb_profile(slug: str = "abb-terra-ac") -> ProfileSpec:
    """ABB Terra AC [abb_doc]: 4109h fallback limit (read at 4024h), 4106h timeout (read at 4020h); no heartbeat:
    any request refreshes. The shipped slug, so the vendor's defaults apply (60 s, fallback 0xFF)."""
    return charger_profile(
        slug,
        [
            reg("charging_current_limit", 16398, **U32, scale=0.001, unit="A", role="current_limit_a"),
            *currents(16400, 2, **U32, scale=0.001),
            reg("communication_timeout_readback", 16416, unit="s"),
            reg("current_limit_set_by_modbus", 16418, **U32, scale=0.001, unit="A"),
            reg("fallback_limit_readback", 16420, unit="A"),
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
            reg("set_communication_timeout", 16646, access="w", unit="s", write_min=10, write_max=65535),
            reg("set_fallback_limit", 16649, access="w", unit="A", write_min=6, write_max=32, write_values=[0, 255]),
        ],
        [
            *limit_commands("set_charging_current_limit", "current_limit_set_by_modbus"),
            {
                "action": "set_failsafe_current",
                "register": "set_fallback_limit",
                "min_value": 0,
                "max_value": 32,
                "verify_register": "fallback_limit_readback",
            },
            {
                "action": "set_failsafe_timeout",
                "register": "set_communication_timeout",
                "min_value": 10,
                "max_value": 65535,
                "verify_register": "communication_timeout_readback",
            },
        ],
        [],
    )


class TestClock:
    """Seconds that move only when the test says."""

    __test__ = False

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class Charger:
    """A simulated charger mid-session, its clock, and a Modbus client doing what the poller does."""

    def __init__(self, sim: SimulatedChargePoint, client: AsyncModbusTcpClient, clock: TestClock) -> None:
        self.sim, self.client, self.clock, self.spec = sim, client, clock, sim.profile

    async def write(self, name: str, value: float) -> None:
        register = self.spec.register(name)
        words = encode_for_write(register, value)
        if len(words) == 1:
            response = await self.client.write_register(register.address, words[0], device_id=self.sim.unit_id)
        else:
            response = await self.client.write_registers(register.address, words, device_id=self.sim.unit_id)
        assert not response.isError(), response

    async def command(self, action: str, value: float) -> None:
        command = self.spec.command(action)
        assert command is not None
        await self.write(command.register, value)

    async def read(self, name: str) -> Value:
        return await self.read_register(name)

    async def read_register(self, name: str) -> Value:
        """One register by its function code (holding or input), decoded as the poller decodes it."""
        register = self.spec.register(name)
        reader = (
            self.client.read_input_registers if register.function == "input" else self.client.read_holding_registers
        )
        response = await reader(register.address, count=register.count, device_id=self.sim.unit_id)
        assert not response.isError(), response
        return decode_register(register, response.registers)

    async def limit_a(self) -> float:
        limit = self.spec.register_for("current_limit_a")
        assert limit is not None
        return float(await self.read(limit.name))

    async def currents_a(self) -> list[float]:
        return [float(await self.read(f"current_l{n}")) for n in (1, 2, 3)]

    async def settle(self) -> None:
        """Let the car follow the limit (IEC 61851-1: within 5 s)."""
        self.sim.tick(6.0)


@pytest_asyncio.fixture
async def make_charger() -> AsyncIterator[Any]:
    started: list[tuple[SimulatedChargePoint, AsyncModbusTcpClient]] = []

    async def make(spec: ProfileSpec, *, ignore_writes: bool = False) -> Charger:
        clock = TestClock()
        behaviour = ChargePointBehaviour(random.Random(3), start_busy=True, mean_fault_interval_s=math.inf)
        behaviour.vehicle.max_current_a = 32.0  # type: ignore[union-attr]
        sim = SimulatedChargePoint("wd-cp", spec, behaviour, clock=clock, ignore_writes=ignore_writes)
        await sim.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=5, retries=0)
        started.append((sim, client))
        assert await client.connect()
        return Charger(sim, client, clock)

    yield make
    for sim, client in started:
        client.close()
        await sim.stop()


async def test_keba_falls_back_when_5018_is_not_rewritten_and_a_new_limit_ends_it(make_charger: Any) -> None:
    charger = await make_charger(KEBA)
    sim = charger.sim
    await charger.command(CommandAction.SET_CURRENT_LIMIT, 16)
    await charger.command(CommandAction.SET_FAILSAFE_CURRENT, 8)
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 10)
    # The read-backs (1600 mA, 1602 s) show what was written.
    assert await charger.read("failsafe_current") == pytest.approx(8)
    assert await charger.read("failsafe_timeout") == 10
    await charger.settle()
    assert 10 < max(await charger.currents_a()) <= 16

    charger.clock.now_s += 9.0
    assert await charger.limit_a() == pytest.approx(16) and not sim.failsafe_active
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 10)  # the heartbeat: rewrite 5018
    charger.clock.now_s += 9.0  # 18 s since the timeout was first written, 9 s since the heartbeat
    assert await charger.limit_a() == pytest.approx(16) and not sim.failsafe_active

    charger.clock.now_s += 1.5  # 10.5 s without a heartbeat
    assert await charger.limit_a() == pytest.approx(8)  # the limit in force, over Modbus
    assert sim.failsafe_active
    await charger.settle()
    assert 0 < max(await charger.currents_a()) <= 8

    charger.clock.now_s += 100.0  # it stays there, whatever the time
    assert await charger.limit_a() == pytest.approx(8)

    await charger.command(CommandAction.SET_CURRENT_LIMIT, 20)  # a controller is back
    assert not sim.failsafe_active
    assert await charger.limit_a() == pytest.approx(20)
    await charger.settle()
    assert max(await charger.currents_a()) > 12


async def test_keba_timeout_0_disables_the_watchdog(make_charger: Any) -> None:
    charger = await make_charger(KEBA)
    await charger.command(CommandAction.SET_CURRENT_LIMIT, 16)
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 0)
    charger.clock.now_s += 3600.0
    assert await charger.limit_a() == pytest.approx(16)
    assert not charger.sim.failsafe_active


async def test_keba_a_failsafe_current_of_0_pauses(make_charger: Any) -> None:
    charger = await make_charger(KEBA)
    await charger.command(CommandAction.SET_FAILSAFE_CURRENT, 0)
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 10)
    charger.clock.now_s += 11.0
    assert await charger.limit_a() == 0
    await charger.settle()
    assert await charger.currents_a() == [0, 0, 0]
    assert charger.sim.served_status[0] == "suspended"


async def test_webasto_life_bit_keeps_it_alive_and_the_settings_read_their_defaults(make_charger: Any) -> None:
    charger = await make_charger(WEBASTO)
    sim = charger.sim
    # Never written: the registers read the simulated defaults (6 A, 20 s), and nothing lapses
    # before a client took control.
    assert await charger.read("safe_current") == 6
    assert await charger.read("com_timeout") == 20
    charger.clock.now_s += 600.0
    assert not sim.failsafe_active

    await charger.command(CommandAction.SET_FAILSAFE_CURRENT, 10)
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 4)
    await charger.command(CommandAction.SET_CURRENT_LIMIT, 25)
    for _ in range(5):  # the life bit every 2 s (timeout / 2) keeps it alive
        charger.clock.now_s += 2.0
        await charger.write("life_bit", 1)
        assert await charger.limit_a() == pytest.approx(25)
    assert sim.watchdog is not None and sim.watchdog.lapses == 0

    charger.clock.now_s += 4.0  # reads are no refresh for Webasto: only the life bit is
    assert await charger.limit_a() == pytest.approx(10)
    assert sim.failsafe_active and sim.watchdog.lapses == 1


async def test_abb_any_request_refreshes_and_the_unset_fallback_stops_the_session(make_charger: Any) -> None:
    charger = await make_charger(abb_profile())
    sim = charger.sim
    await charger.command(CommandAction.SET_CURRENT_LIMIT, 16)
    # ABB's defaults: 60 s, fallback limit 0xFF (none set).
    assert await charger.read("communication_timeout_readback") == 60
    assert await charger.read("fallback_limit_readback") == 255
    for _ in range(4):  # a read every 50 s keeps it alive: any request is ABB's refresh
        charger.clock.now_s += 50.0
        assert await charger.limit_a() == pytest.approx(16)
    charger.clock.now_s += 61.0
    assert await charger.limit_a() == 0  # "stops the session unless a fallback limit is set"
    assert sim.failsafe_active

    await charger.command(CommandAction.SET_FAILSAFE_CURRENT, 10)
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 10)
    await charger.command(CommandAction.SET_CURRENT_LIMIT, 16)
    assert not sim.failsafe_active
    charger.clock.now_s += 11.0
    assert await charger.limit_a() == pytest.approx(10)
    assert sim.failsafe_active and sim.failsafe_current_a == 10 and sim.failsafe_timeout_s == 10


async def test_a_charger_ignoring_writes_never_falls_back(make_charger: Any) -> None:
    charger = await make_charger(abb_profile(), ignore_writes=True)
    await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 10)
    charger.clock.now_s += 3600.0
    assert await charger.limit_a() == pytest.approx(32)
    assert not charger.sim.failsafe_active


def test_profiles_without_the_failsafe_command_have_no_watchdog() -> None:
    limit = reg("limit", 20, access="rw", unit="A", role="current_limit_a", write_min=6, write_max=32, write_values=[0])
    spec = charger_profile("wd-none", [*currents(10, 1), limit], limit_commands("limit"), [])
    behaviour = ChargePointBehaviour(random.Random(1), start_busy=True)
    sim = SimulatedChargePoint("wd-none", spec, behaviour)
    assert sim.watchdog is None and not sim.failsafe_active and sim.failsafe_current_a is None


SHIPPED_WITH_FAILSAFE = ("keba-p30", "webasto-next", "vestel-evc04", "abb-terra-ac", "schneider-evlink-pro-ac")


@pytest.mark.parametrize("slug", SHIPPED_WITH_FAILSAFE)
async def test_the_shipped_profiles_fall_back_to_the_failsafe_current_they_were_given(
    slug: str, make_charger: Any
) -> None:
    """The reference names a failsafe current for all five; each falls back to it once nothing refreshes it."""
    spec = next(read_spec_file(path) for path in shipped_profile_files() if path.stem == slug)
    assert spec.command(CommandAction.SET_FAILSAFE_CURRENT).supported  # type: ignore[union-attr]
    charger = await make_charger(spec)
    sim = charger.sim
    await charger.command(CommandAction.SET_CURRENT_LIMIT, 16)
    await charger.command(CommandAction.SET_FAILSAFE_CURRENT, 10)
    timeout = spec.command(CommandAction.SET_FAILSAFE_TIMEOUT)
    if timeout is not None and timeout.supported:
        await charger.command(CommandAction.SET_FAILSAFE_TIMEOUT, 20)
    else:  # Schneider: no timeout register [starkest_schneider]; the simulated default
        assert sim.failsafe_timeout_s == 20
    # The verify registers read back what was written (the poller verifies the commands by them).
    command = spec.command(CommandAction.SET_FAILSAFE_CURRENT)
    assert command is not None
    verify = command.verify_register or command.register
    assert await charger.read_register(verify) == pytest.approx(10)
    # The poller's heartbeats keep it alive (ABB, with none, by its reads).
    for _ in range(4):
        charger.clock.now_s += 15.0
        for heartbeat in spec.heartbeats:
            value = heartbeat.value if heartbeat.value is not None else sim.failsafe_timeout_s
            await charger.write(heartbeat.register, value)  # type: ignore[arg-type]
        if not spec.heartbeats:
            await charger.read_register(verify)
        assert not sim.failsafe_active, slug
    charger.clock.now_s += 21.0
    assert sim.failsafe_active, slug
    assert sim.behaviour.max_current_a == pytest.approx(10)
    limit = spec.register_for("current_limit_a")
    if limit is not None and limit.readable:
        assert await charger.read_register(limit.name) == pytest.approx(10)
