"""Commands in the poll loop, against the simulator: drained between polls by the charge point's own
task (woken for them, on its one connection), the held limit in every record and in the heartbeats,
ownership, offline, restarts and removals."""

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gateway.choices import Access, CommandAction, CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.modbus.pacing import Pacing
from gateway.modbus.poller import ChargePointConfig, ChargePointPoller, Poller
from gateway.profiles.spec import CommandSpec, Heartbeat, ProfileSpec, RegisterSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import Collected, free_port, wait_for, within
from tests.faults import CountingProxy

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
LIMIT = GENERIC.register("max_current")
LIFEBIT = RegisterSpec("lifebit", 20, access=Access.WRITE, write_values=(1,))
COMMANDS = (
    CommandSpec(CommandAction.SET_CURRENT_LIMIT, register="max_current", min_value=6, max_value=32, settle_s=0.05),
    CommandSpec(CommandAction.PAUSE, register="max_current", value=0, settle_s=0.05),
    CommandSpec(CommandAction.RESUME, register="max_current", settle_s=0.05),
)
PROFILE = replace(GENERIC, slug="generic-commands", registers=(*GENERIC.registers, LIFEBIT), commands=COMMANDS)
LONG_INTERVAL_MS = 60_000  # one poll in a whole test: whatever else happens was not waiting for a poll


def make_command(
    action: str, value: float | None = None, *, charge_point: str = "cp-1", expires_in_s: float = 30.0
) -> CommandMessage:
    now = datetime.now(UTC)
    return CommandMessage(
        id=uuid.uuid4().hex,
        charge_point=charge_point,
        site="lab",
        action=action,
        value=value,
        user="operator",
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
    )


class Hooks:
    """CommandHooks that keep every result; `fail_claim` makes claim raise (a defect, e.g. a full disk)."""

    def __init__(self, fail_claim: bool = False) -> None:
        self.fail_claim = fail_claim
        self.results: list[CommandResult] = []

    def claim(self, command: CommandMessage) -> bool:
        if self.fail_claim:
            raise RuntimeError("journal unavailable")
        return True

    def finish(self, result: CommandResult) -> None:
        self.results.append(result)

    def result_of(self, command: CommandMessage) -> CommandResult | None:
        return next((result for result in self.results if result.id == command.id), None)

    async def wait(self, command: CommandMessage, timeout_s: float = 10.0) -> CommandResult:
        await wait_for(lambda: self.result_of(command), timeout_s=timeout_s, what=f"the result of {command.action}")
        result = self.result_of(command)
        assert result is not None
        return result


def config_for(port: int, *, profile: ProfileSpec = PROFILE, interval_ms: int = 250, slug: str = "cp-1"):
    return ChargePointConfig(
        slug=slug,
        site="lab",
        host="127.0.0.1",
        port=port,
        unit_id=1,
        interval_ms=interval_ms,
        profile=profile,
        pacing=Pacing(),
    )


async def test_a_queued_command_wakes_the_loop_and_runs_between_polls_on_its_one_connection() -> None:
    async with (
        SimulatorFleet(PROFILE, 1, base_port=0, seed=4) as fleet,
        CountingProxy(fleet.charge_points[0].port) as proxy,
    ):
        sim = fleet.charge_points[0]
        collected, hooks, stop = Collected(), Hooks(), asyncio.Event()
        poller = ChargePointPoller(config_for(proxy.port, interval_ms=LONG_INTERVAL_MS), collected, hooks=hooks)
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(lambda: collected.records, timeout_s=10, what="the first poll")
            command = make_command(CommandAction.SET_CURRENT_LIMIT, 10)
            poller.commands.put(command)
            # The next poll is a minute away: the result comes because put() woke the loop.
            result = await hooks.wait(command)
        finally:
            stop.set()
            await within(task, 10)
    assert (result.status, result.read_back) == (CommandStatus.APPLIED, 10.0), result.reason
    assert len(collected.records) == 1
    assert [(w.register, w.value) for w in sim.last_writes] == [("max_current", 10.0)]
    assert (proxy.connections, proxy.max_open) == (1, 1)  # the poll's connection, no second one


async def test_records_carry_the_active_limit_held_through_pause_and_resume() -> None:
    async with SimulatorFleet(PROFILE, 1, base_port=0, seed=5) as fleet:
        collected, hooks = Collected(), Hooks()
        poller = Poller(collected, hooks=hooks, poller_id="p-1")
        poller.reconcile([config_for(fleet.charge_points[0].port)])
        try:
            await wait_for(lambda: collected.of("cp-1"), timeout_s=10, what="a first record")
            assert collected.of("cp-1")[-1]["active_limit_a"] is None
            for action, value, active in (
                (CommandAction.SET_CURRENT_LIMIT, 10, 10.0),
                (CommandAction.PAUSE, None, 0.0),
                (CommandAction.RESUME, None, 10.0),
            ):
                command = make_command(action, value)
                assert poller.submit_command(command)
                result = await hooks.wait(command)
                assert (result.status, result.poller) == (CommandStatus.APPLIED, "p-1"), result.reason
                seen = len(collected.records)
                await wait_for(lambda seen=seen: len(collected.records) > seen, timeout_s=10, what="a record after it")
                assert collected.records[-1]["active_limit_a"] == active, action
        finally:
            await poller.stop_all()
    resumed = [w.value for w in fleet.charge_points[0].last_writes if w.register == "max_current"]
    assert resumed == [10.0, 0.0, 10.0]  # resume wrote back the limit held


async def test_a_heartbeat_on_the_limit_register_writes_the_held_setpoint() -> None:
    # An Alfen-like watchdog on the limit register, and a lifebit: without a command the limit
    # heartbeat writes its own value (32 A); once a limit is held it writes that (0 while paused
    # through the same register), so the operator's limit outlives the watchdog. During a command's
    # settle time the lifebit keeps going, and the limit register is left to the command.
    heartbeats = (Heartbeat("max_current", 0.2, value=32), Heartbeat("lifebit", 0.2, value=1))
    commands = (replace(COMMANDS[0], settle_s=1.0), *COMMANDS[1:])
    profile = replace(PROFILE, heartbeats=heartbeats, commands=commands)
    async with SimulatorFleet(profile, 1, base_port=0, seed=6) as fleet:
        sim = fleet.charge_points[0]

        def limit_writes() -> list[float]:
            return [w.value for w in sim.last_writes if w.register == "max_current"]

        hooks, stop = Hooks(), asyncio.Event()
        poller = ChargePointPoller(
            config_for(sim.port, profile=profile, interval_ms=LONG_INTERVAL_MS), Collected(), hooks=hooks
        )
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(lambda: 32.0 in limit_writes(), timeout_s=10, what="the heartbeat's own value")
            limit = make_command(CommandAction.SET_CURRENT_LIMIT, 10)
            poller.commands.put(limit)
            result = await hooks.wait(limit)
            assert result.status == CommandStatus.APPLIED, result.reason
            during_settle = list(sim.requests_received)
            held_from = len(limit_writes())
            await wait_for(lambda: len(limit_writes()) >= held_from + 3, timeout_s=10, what="3 heartbeats")
            assert set(limit_writes()[held_from - 1 :]) == {10.0}
            pause = make_command(CommandAction.PAUSE)
            poller.commands.put(pause)
            assert (await hooks.wait(pause)).status == CommandStatus.APPLIED
            paused_from = len(limit_writes())
            await wait_for(lambda: len(limit_writes()) >= paused_from + 3, timeout_s=10, what="3 heartbeats")
            assert set(limit_writes()[paused_from - 1 :]) == {0.0}
        finally:
            stop.set()
            await within(task, 10)
    # The read-back (the limit register alone) came after lifebits written during the settle time;
    # the limit register itself was left to the command (a heartbeat there would have spoilt the
    # read-back: result not applied).
    read_at = next(i for i, r in enumerate(during_settle) if not r.write and (r.address, r.count) == (LIMIT.address, 1))
    write_at = max(i for i, r in enumerate(during_settle[:read_at]) if r.write and r.address == LIMIT.address)
    lifebits = [r for r in during_settle[write_at:read_at] if r.write and r.address == LIFEBIT.address]
    assert len(lifebits) >= 2, during_settle[write_at:read_at]


async def test_submit_command_refuses_a_charge_point_this_poller_does_not_poll() -> None:
    poller = Poller(Collected(), hooks=Hooks())
    poller.reconcile([config_for(free_port(), interval_ms=LONG_INTERVAL_MS)])
    try:
        assert poller.submit_command(make_command(CommandAction.PAUSE, charge_point="elsewhere")) is False
        assert poller.submit_command(make_command(CommandAction.PAUSE)) is True
    finally:
        await poller.stop_all()


async def test_an_offline_charge_point_fails_within_the_expiry() -> None:
    collected, hooks = Collected(), Hooks()
    poller = Poller(collected, hooks=hooks)
    poller.reconcile([config_for(free_port())])  # nobody listens there
    try:
        await wait_for(lambda: collected.of("cp-1"), timeout_s=10, what="the offline record")
        assert collected.records[-1]["status"] == "offline"
        command = make_command(CommandAction.SET_CURRENT_LIMIT, 10, expires_in_s=5)
        assert poller.submit_command(command)
        result = await hooks.wait(command, timeout_s=10)
    finally:
        await poller.stop_all()
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.OFFLINE)
    assert result.completed_at < command.expires_at


async def test_commands_and_the_held_limit_outlive_a_restart_of_the_charge_point_loop() -> None:
    async with SimulatorFleet(PROFILE, 1, base_port=0, seed=7) as fleet:
        sim = fleet.charge_points[0]
        collected, hooks = Collected(), Hooks()
        poller = Poller(collected, hooks=hooks)
        config = config_for(sim.port)
        poller.reconcile([config])
        try:
            await wait_for(lambda: collected.of("cp-1"), timeout_s=10, what="a first record")
            limit = make_command(CommandAction.SET_CURRENT_LIMIT, 10)
            assert poller.submit_command(limit)
            assert (await hooks.wait(limit)).status == CommandStatus.APPLIED
            # Queued, then at once an admin edit restarts the loop: the old loop stops without
            # taking them, the new one does (the expired one is still refused as expired).
            late = make_command(CommandAction.PAUSE, expires_in_s=-1)
            resume = make_command(CommandAction.RESUME)
            assert poller.submit_command(late) and poller.submit_command(resume)
            [(_, old_task, _)] = poller.tasks.values()
            poller.reconcile([replace(config, interval_ms=300)])
            result = await hooks.wait(resume)
            assert old_task.done()
            # resume writes the limit held, which the restart kept (else the range's top, 32 A)
            assert (result.status, result.read_back) == (CommandStatus.APPLIED, 10.0), result.reason
            assert hooks.result_of(late).reason_code == FailureReason.EXPIRED
            seen = len(collected.records)
            await wait_for(lambda: len(collected.records) > seen, timeout_s=10, what="a record from the new loop")
            assert collected.records[-1]["active_limit_a"] == 10.0
        finally:
            await poller.stop_all()
    assert [w.value for w in sim.last_writes] == [10.0, 10.0]


async def test_queued_commands_of_a_charge_point_no_longer_polled_fail_at_once() -> None:
    hooks = Hooks()
    poller = Poller(Collected(), hooks=hooks)
    poller.reconcile([config_for(free_port(), interval_ms=LONG_INTERVAL_MS)])
    command = make_command(CommandAction.PAUSE)
    try:
        assert poller.submit_command(command)
        poller.reconcile([])  # disabled before its loop took the command
        [result] = hooks.results
        assert (result.id, result.reason_code) == (command.id, FailureReason.OFFLINE)
        assert "no longer polled" in result.reason
        assert poller.submit_command(make_command(CommandAction.PAUSE)) is False
    finally:
        await poller.stop_all()


async def test_a_loop_that_fails_during_a_command_reports_it_interrupted_and_restarts(settings) -> None:
    async with SimulatorFleet(PROFILE, 1, base_port=0, seed=8) as fleet:
        sim = fleet.charge_points[0]
        collected, hooks = Collected(), Hooks(fail_claim=True)
        poller = Poller(collected, hooks=hooks)
        poller.reconcile([config_for(sim.port)])
        try:
            await wait_for(lambda: collected.of("cp-1"), timeout_s=10, what="a first record")
            command = make_command(CommandAction.SET_CURRENT_LIMIT, 10)
            assert poller.submit_command(command)
            result = await hooks.wait(command)
            await wait_for(
                lambda: any("poller crashed (RuntimeError" in (r["error"] or "") for r in collected.records),
                timeout_s=10,
                what="the crash record",
            )
            crashed_at = len(collected.records)
            await wait_for(
                lambda: len(collected.records) > crashed_at + 1, timeout_s=10, what="polls after the restart"
            )
        finally:
            await poller.stop_all()
    assert (result.status, result.reason_code) == (CommandStatus.FAILED, FailureReason.INTERRUPTED)
    assert "RuntimeError: journal unavailable" in result.reason and "not retried" in result.reason
    assert [w for w in sim.last_writes if w.register == "max_current"] == []
