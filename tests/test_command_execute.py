"""execute_command against real Modbus servers: every failure reason, the applied path, the golden words.

Servers: the simulator (gateway/simulator), which honours writes as the profile's commands say, and
tests/golden/wire.py's WordServer, whose read words never change on a write (a charger that
ignores writes) and which records every write as it arrived on the wire.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.choices import CommandAction, CommandStatus, FailureReason, Function
from gateway.commands.execute import Refused, execute_command, plan_command
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.modbus.connection import ChargePointConnection
from gateway.profiles.encode import encode_for_write
from gateway.profiles.spec import CommandSpec, ProfileSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file, shipped_profile_files
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import free_port, wait_for, within
from tests.faults import HungCharger
from tests.golden import all_tables
from tests.golden.wire import WordServer, WriteSeen

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
LIMIT_ADDRESS = GENERIC.register("max_current").address  # 0.1 A per unit, 0 or 6..32 A
STATUS_ADDRESS = GENERIC.register("status").address
# Hand-made commands on the generic profile (the shipped ones may differ: these tests pin the mechanism).
COMMANDS = (
    CommandSpec(CommandAction.SET_CURRENT_LIMIT, register="max_current", min_value=6, max_value=32, settle_s=0.05),
    CommandSpec(CommandAction.PAUSE, register="max_current", value=0, settle_s=0.05),
    CommandSpec(CommandAction.RESUME, register="max_current", settle_s=0.05),
)
PROFILE = replace(GENERIC, slug="generic-commands", commands=COMMANDS)
MODBUS_TIMEOUT_S = 0.5


def make_command(action: str, value: float | None = None, *, expires_in_s: float = 30.0) -> CommandMessage:
    now = datetime.now(UTC)
    return CommandMessage(
        id=uuid.uuid4().hex,
        charge_point="cp-1",
        site="lab",
        action=action,
        value=value,
        user="operator",
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
    )


class Hooks:
    """CommandHooks that remember what they were asked (claim answers `allow`)."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.claimed: list[str] = []
        self.finished: list[CommandResult] = []

    def claim(self, command: CommandMessage) -> bool:
        self.claimed.append(command.id)
        return self.allow

    def finish(self, result: CommandResult) -> None:
        self.finished.append(result)


async def run(
    connection: ChargePointConnection,
    command: CommandMessage,
    *,
    profile: ProfileSpec = PROFILE,
    hooks: Hooks | None = None,
    held_limit_a: float | None = None,
    connected: bool = True,
    **options,
) -> CommandResult:
    return await within(
        execute_command(
            connection,
            profile,
            command,
            hooks=hooks or Hooks(),
            poller="test-poller",
            held_limit_a=held_limit_a,
            connected=connected,
            **options,
        )
    )


@pytest.fixture
async def simulated() -> AsyncIterator[tuple[object, ChargePointConnection]]:
    """A simulated generic charger honouring PROFILE's commands, and a connection to it."""
    async with SimulatorFleet(PROFILE, 1, base_port=0, seed=3) as fleet:
        sim = fleet.charge_points[0]
        connection = ChargePointConnection("127.0.0.1", sim.port, sim.unit_id, MODBUS_TIMEOUT_S)
        await within(connection.ensure_connected())
        try:
            yield sim, connection
        finally:
            await connection.close()


def served(limit_a: float = 16.0, status: int = 3) -> dict[tuple[int, str, int], int]:
    """Generic profile words: the limit register (0.1 A units) and the status register."""
    return {(1, "holding", LIMIT_ADDRESS): round(limit_a * 10), (1, "holding", STATUS_ADDRESS): status}


@pytest.fixture
async def word_server() -> AsyncIterator[tuple[WordServer, ChargePointConnection]]:
    """A WordServer serving a 16 A limit (writes change nothing), and a connection to it."""
    server = WordServer(served())
    port = free_port()
    await server.start(port)
    connection = ChargePointConnection("127.0.0.1", port, 1, MODBUS_TIMEOUT_S)
    await within(connection.ensure_connected())
    try:
        yield server, connection
    finally:
        await connection.close()
        await server.stop()


def writes_of(sim) -> list:
    return [request for request in sim.requests_received if request.write]


async def test_a_limit_is_written_once_settled_read_back_and_applied(simulated) -> None:
    sim, connection = simulated
    hooks = Hooks()
    command = make_command(CommandAction.SET_CURRENT_LIMIT, 10)
    result = await run(connection, command, hooks=hooks)
    assert (result.status, result.read_back, result.reason_code) == (CommandStatus.APPLIED, 10.0, None)
    assert (result.id, result.poller, result.value) == (command.id, "test-poller", 10)
    assert hooks.claimed == [command.id]
    assert len(writes_of(sim)) == 1
    assert [(w.register, w.value) for w in sim.last_writes] == [("max_current", 10.0)]


async def test_pause_and_resume_write_what_the_profile_says(simulated) -> None:
    sim, connection = simulated
    paused = await run(connection, make_command(CommandAction.PAUSE))
    assert (paused.status, paused.read_back) == (CommandStatus.APPLIED, 0.0)
    # resume: back to the limit the poller holds, else to the top of the command's range
    held = await run(connection, make_command(CommandAction.RESUME), held_limit_a=12)
    assert (held.status, held.read_back) == (CommandStatus.APPLIED, 12.0)
    full = await run(connection, make_command(CommandAction.RESUME))
    assert (full.status, full.read_back) == (CommandStatus.APPLIED, 32.0)
    assert [w.value for w in sim.last_writes] == [0.0, 12.0, 32.0]


async def test_an_expired_command_is_never_claimed_nor_written(simulated) -> None:
    sim, connection = simulated
    hooks = Hooks()
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10, expires_in_s=-1), hooks=hooks)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.EXPIRED)
    assert "expired at" in result.reason and "not written" in result.reason
    assert hooks.claimed == [] and writes_of(sim) == []


@pytest.mark.parametrize(
    ("commands", "expect"),
    [
        (
            (COMMANDS[0], CommandSpec(CommandAction.PAUSE, unsupported="the charger has no pause register")),
            "cannot pause charging: the charger has no pause register",
        ),
        ((COMMANDS[0],), "does not say how to pause charging"),
    ],
    ids=["declared-unsupported", "not-declared"],
)
async def test_an_unsupported_command_says_why(simulated, commands, expect) -> None:
    sim, connection = simulated
    hooks = Hooks()
    profile = replace(PROFILE, commands=commands)
    result = await run(connection, make_command(CommandAction.PAUSE), profile=profile, hooks=hooks)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.UNSUPPORTED)
    assert expect in result.reason
    assert hooks.claimed == [] and writes_of(sim) == []


WIDE = replace(COMMANDS[0], max_value=40)  # a command range wider than the register's 0 or 6..32 A


@pytest.mark.parametrize(
    ("command_spec", "value", "expect"),
    [
        (COMMANDS[0], 40, "40 A is outside what"),  # the command's own range
        (COMMANDS[0], 3, "3 A is outside what"),
        (WIDE, 35, "above the maximum 32"),  # inside the command's range, outside the register's
    ],
    ids=["above-command-range", "below-command-range", "outside-register-range"],
)
async def test_an_out_of_range_limit_is_refused_before_the_wire(simulated, command_spec, value, expect) -> None:
    sim, connection = simulated
    hooks = Hooks()
    profile = replace(PROFILE, commands=(command_spec, *COMMANDS[1:]))
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, value), profile=profile, hooks=hooks)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.OUT_OF_RANGE)
    assert expect in result.reason and result.reason.endswith("not written")
    assert hooks.claimed == [] and writes_of(sim) == []


async def test_a_limit_without_a_value_is_invalid(simulated) -> None:
    sim, connection = simulated
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT))
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.INVALID)
    assert writes_of(sim) == []


async def test_an_offline_charge_point_fails_at_once_unclaimed(simulated) -> None:
    sim, connection = simulated
    hooks = Hooks()
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10), hooks=hooks, connected=False)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.OFFLINE)
    assert "offline" in result.reason
    assert hooks.claimed == [] and writes_of(sim) == []


async def test_a_command_claimed_by_an_earlier_run_is_not_written_again(simulated) -> None:
    sim, connection = simulated
    hooks = Hooks(allow=False)
    command = make_command(CommandAction.SET_CURRENT_LIMIT, 10)
    result = await run(connection, command, hooks=hooks)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.INTERRUPTED)
    assert result.reason == "already claimed by an earlier run of this poller; not written again"
    assert hooks.claimed == [command.id] and writes_of(sim) == []


async def test_a_write_the_charger_refuses_names_the_modbus_exception(simulated) -> None:
    sim, connection = simulated
    # The poller's copy of the profile allows 35 A; the charger (the shipped range) answers ILLEGAL DATA VALUE.
    register = replace(PROFILE.register("max_current"), write_max=40)
    profile = replace(
        PROFILE,
        registers=tuple(register if r.name == register.name else r for r in PROFILE.registers),
        commands=(WIDE, *COMMANDS[1:]),
    )
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 35), profile=profile)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.MODBUS_EXCEPTION)
    assert "the charger refused the write of 35 A to max_current: ILLEGAL" in result.reason, result.reason
    assert len(writes_of(sim)) == 1  # sent once, not retried


async def test_a_charger_that_ignores_the_write_is_a_readback_mismatch(word_server) -> None:
    server, connection = word_server
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10))
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.READBACK_MISMATCH)
    assert result.reason == "expected 10 A, read 16 A"
    assert result.read_back == 16.0
    assert server.writes == [WriteSeen(1, 6, LIMIT_ADDRESS, (100,))]


async def test_a_simulated_charger_ignoring_writes_is_a_readback_mismatch(simulated) -> None:
    sim, connection = simulated
    sim.set_ignore_writes(True)
    before = sim.register_values()["max_current"]
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10 if before != 10 else 12))
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.READBACK_MISMATCH)
    assert result.read_back == before and f"read {before:g} A" in result.reason
    assert len(writes_of(sim)) == 1


@pytest.mark.parametrize(
    ("tolerance", "status"), [(0.2, CommandStatus.APPLIED), (0.0, CommandStatus.FAILED)], ids=["within", "outside"]
)
async def test_the_read_back_may_differ_by_the_tolerance(word_server, tolerance, status) -> None:
    server, connection = word_server
    server.words[(1, "holding", LIMIT_ADDRESS)] = 101  # the charger shows 10.1 A for 10 A
    profile = replace(PROFILE, commands=(replace(COMMANDS[0], tolerance=tolerance), *COMMANDS[1:]))
    result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10), profile=profile)
    assert (result.status, result.read_back) == (status, 10.1)


@pytest.mark.parametrize(("status", "applied"), [(5, True), (3, False)], ids=["one-of", "none-of"])
async def test_a_pause_verified_by_any_of_several_status_codes(word_server, status, applied) -> None:
    server, connection = word_server
    server.words[(1, "holding", STATUS_ADDRESS)] = status
    pause = CommandSpec(
        CommandAction.PAUSE, register="max_current", value=0, verify_register="status", verify_values=(1, 5)
    )
    profile = replace(PROFILE, commands=(COMMANDS[0], pause))
    result = await run(connection, make_command(CommandAction.PAUSE), profile=profile)
    assert result.read_back == status
    if applied:
        assert result.status == CommandStatus.APPLIED
    else:
        assert (result.reason_code, result.reason) == (FailureReason.READBACK_MISMATCH, "expected 1 or 5, read 3")


async def test_no_answer_to_the_write_is_a_timeout_and_not_retried() -> None:
    async with HungCharger() as hung:
        connection = ChargePointConnection("127.0.0.1", hung.port, 1, MODBUS_TIMEOUT_S)
        try:
            await within(connection.ensure_connected())
            result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10))
        finally:
            await connection.close()
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.TIMEOUT)
    assert "no answer to the write of 10 A to max_current" in result.reason and "not retried" in result.reason
    assert len(hung.request_at) == 1


async def test_a_connection_lost_before_the_read_back_is_a_timeout_after_the_write(word_server) -> None:
    server, connection = word_server

    async def settle_then_lose_the_charger(_seconds: float) -> bool:
        await server.stop()
        return False

    result = await run(
        connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10), settle=settle_then_lose_the_charger
    )
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.TIMEOUT)
    assert result.reason.startswith("written (10 A to max_current), no read-back:"), result.reason
    assert len(server.writes) == 1


async def test_a_poller_stopping_during_the_settle_time_says_it_wrote_but_did_not_verify(word_server) -> None:
    server, connection = word_server
    connection.stop = asyncio.Event()
    profile = replace(PROFILE, commands=(replace(COMMANDS[0], settle_s=60), *COMMANDS[1:]))
    task = asyncio.create_task(run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10), profile=profile))
    await wait_for(lambda: server.writes, timeout_s=10, what="the write")  # then the default settle waits on stop
    connection.stop.set()
    result = await within(task, 5)
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.INTERRUPTED)
    assert result.reason == "written (10 A to max_current); the poller stopped before the read-back"
    assert [read for read in server.reads if read[2] == LIMIT_ADDRESS] == []


async def test_a_register_on_another_unit_id_is_written_and_read_back_there() -> None:
    # Alfen keeps station registers on unit 200: a command's register says its own unit id.
    limit = replace(PROFILE.register("max_current"), unit_id=200)
    profile = replace(PROFILE, registers=tuple(limit if r.name == limit.name else r for r in PROFILE.registers))
    server = WordServer({(200, "holding", LIMIT_ADDRESS): 100})
    port = free_port()
    await server.start(port)
    connection = ChargePointConnection("127.0.0.1", port, 1, MODBUS_TIMEOUT_S)
    try:
        await within(connection.ensure_connected())
        result = await run(connection, make_command(CommandAction.SET_CURRENT_LIMIT, 10), profile=profile)
    finally:
        await connection.close()
        await server.stop()
    assert result.status == CommandStatus.APPLIED, result.reason
    assert server.writes == [WriteSeen(200, 6, LIMIT_ADDRESS, (100,))]
    assert server.reads == [(200, 3, LIMIT_ADDRESS, 1)]


# --- the golden write tables: the exact words each shipped profile's commands put on the wire ------------

SPECS = {spec.slug: spec for spec in (read_spec_file(path) for path in shipped_profile_files())}
GOLDEN = {
    "limit 10 A": (CommandAction.SET_CURRENT_LIMIT, 10.0),
    "pause": (CommandAction.PAUSE, None),
    "failsafe 10 A": (CommandAction.SET_FAILSAFE_CURRENT, 10.0),
    "failsafe timeout 30 s": (CommandAction.SET_FAILSAFE_TIMEOUT, 30.0),
}
# Every golden table has both rows, and every shipped real profile supports both commands.
GOLDEN_CASES = [(table, row) for table in all_tables() for row in table.writes]


@pytest.mark.parametrize(
    ("table", "row"), GOLDEN_CASES, ids=[f"{table.slug}-{row.action}" for table, row in GOLDEN_CASES]
)
async def test_commands_put_the_golden_words_on_the_wire(table, row) -> None:
    """set_current_limit 10 and pause of every shipped profile that supports them: the vendor's words."""
    profile = SPECS[table.slug]
    action, value = GOLDEN[row.action]
    command = make_command(action, value)
    # The charger shows what it was asked (the verify register holds the expected value), so the
    # whole path runs to `applied`; what is checked is the write on the wire.
    plan = plan_command(profile, command, None)
    verify = plan.verify_register
    unit_id = table.unit_id if verify.unit_id is None else verify.unit_id
    function = "input" if verify.function == Function.INPUT else "holding"
    words = encode_for_write(verify, plan.expected[0])
    server = WordServer({(unit_id, function, verify.address + i): word for i, word in enumerate(words)})
    port = free_port()
    await server.start(port)
    connection = ChargePointConnection("127.0.0.1", port, table.unit_id, 5.0)

    async def no_settle(_seconds: float) -> bool:
        return False  # the settle time is the charger's; these words do not change with it

    try:
        await within(connection.ensure_connected())
        result = await run(connection, command, profile=profile, settle=no_settle)
    finally:
        await connection.close()
        await server.stop()
    unit = table.unit_id if row.unit_id is None else row.unit_id
    [seen] = server.writes
    assert seen.function_code in row.function_codes, f"{row.action}: FC{seen.function_code} ({row.source})"
    assert seen == WriteSeen(unit, seen.function_code, row.address, row.words), f"{row.action} ({row.source})"
    assert result.status == CommandStatus.APPLIED, result.reason


@pytest.mark.parametrize(
    ("slug", "action", "value", "expect"),
    [
        ("keba-p30", CommandAction.SET_FAILSAFE_CURRENT, 40.0, "40 A is outside what KEBA KeContact P30 takes"),
        ("keba-p30", CommandAction.SET_FAILSAFE_CURRENT, 3.0, "below the minimum 6"),  # 0 or 6..63 A (keba_rust)
        ("keba-p30", CommandAction.SET_FAILSAFE_TIMEOUT, 5.0, "5 s is outside what"),
        ("abb-terra-ac", CommandAction.SET_FAILSAFE_TIMEOUT, 70000.0, "70000 s is outside what"),  # abb_doc: ..65535
        ("webasto-next", CommandAction.SET_FAILSAFE_CURRENT, 0.0, "0 A is outside what"),  # no source takes 0 A
    ],
)
def test_a_failsafe_value_outside_the_profile_or_register_range_is_refused_before_the_wire(
    slug: str, action: str, value: float, expect: str
) -> None:
    with pytest.raises(Refused) as refused:
        plan_command(SPECS[slug], make_command(action, value), None)
    assert refused.value.reason_code == FailureReason.OUT_OF_RANGE
    assert expect in refused.value.reason and refused.value.reason.endswith("not written")


def test_a_failsafe_command_without_a_value_is_invalid() -> None:
    with pytest.raises(Refused) as refused:
        plan_command(SPECS["abb-terra-ac"], make_command(CommandAction.SET_FAILSAFE_CURRENT), None)
    assert (refused.value.reason_code, refused.value.reason) == (
        FailureReason.INVALID,
        "set_failsafe_current needs a value in A; not written",
    )
    # 0 A: no charging in failsafe, which KEBA (keba_rust: "0 or 6-63 A") and ABB (below 6 A pauses) take.
    for slug in ("keba-p30", "abb-terra-ac"):
        assert plan_command(SPECS[slug], make_command(CommandAction.SET_FAILSAFE_CURRENT, 0.0), None).words[-1] == 0
