"""Carry out one operator command on a charge point's own connection: check, claim, write, settle, verify.

Checks, in this order, each failing with a reason an operator reads: expired, unsupported by the
profile, out of range (the command's range, then the register's write range), charge point
offline, already claimed (the journal says an earlier run took it: never written again). Then the
write, once (never retried: a write whose answer was lost may have been applied), the profile's
settle time, and a read of the verify register: applied with the value read back, or failed with
what was expected and what was read. Everything before the write is synchronous, so the expiry
checked first is still the expiry at the moment the write is sent.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from gateway.choices import VALUE_UNITS, CommandAction, FailureReason
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.queue import CommandHooks
from gateway.modbus.connection import (
    ChargePointConnection,
    DeviceException,
    ModbusError,
    PaceInterrupted,
)
from gateway.modbus.planner import ReadRequest, plan_reads
from gateway.profiles.codec import Value
from gateway.profiles.decode import decode_block
from gateway.profiles.encode import WriteRangeError, encode_checked_write
from gateway.profiles.spec import CommandSpec, ProfileSpec, RegisterSpec
from gateway.runtime import wait_unless_stopped

# Waits out a command's settle time (the poller's keeps its heartbeats going meanwhile);
# returns True if the poller is stopping.
Settle = Callable[[float], Awaitable[bool]]
ACTION_WORDS = {
    CommandAction.SET_CURRENT_LIMIT: "set a current limit",
    CommandAction.PAUSE: "pause charging",
    CommandAction.RESUME: "resume charging",
    CommandAction.SET_FAILSAFE_CURRENT: "set a failsafe current",
    CommandAction.SET_FAILSAFE_TIMEOUT: "set a failsafe timeout",
}


class Refused(Exception):
    """A command refused before anything was written."""

    def __init__(self, reason_code: str, reason: str) -> None:
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason


@dataclass(frozen=True)
class WritePlan:
    """What a command writes and how it is verified, worked out (and range-checked) before the write."""

    command: CommandSpec
    register: RegisterSpec
    value: float
    words: tuple[int, ...]
    verify: ReadRequest
    verify_register: RegisterSpec
    expected: tuple[float, ...]  # the read-back must be within `tolerance` of one of these


def plan_command(profile: ProfileSpec, command: CommandMessage, held_limit_a: float | None) -> WritePlan:
    """The write and read-back of a command, or Refused (unsupported, out of range, invalid)."""
    spec = profile.command(command.action)
    verb = ACTION_WORDS.get(command.action, command.action)
    if spec is None:
        raise Refused(FailureReason.UNSUPPORTED, f"profile {profile.slug} does not say how to {verb}; not written")
    if not spec.supported:
        why = spec.unsupported or "no register to write"
        raise Refused(FailureReason.UNSUPPORTED, f"{profile.name} cannot {verb}: {why}; not written")
    try:
        register = profile.register(spec.register)
        verify_register = profile.register(spec.verify_register or spec.register)
    except KeyError as exc:
        raise Refused(
            FailureReason.INVALID, f"profile {profile.slug} names a register it does not have ({exc}); not written"
        ) from None
    if not verify_register.readable:
        raise Refused(
            FailureReason.INVALID,
            f"profile {profile.slug} verifies {command.action} by reading {verify_register.name}, "
            "which cannot be read; not written",
        )
    value = _value_to_write(profile, spec, command, held_limit_a)
    try:
        words = tuple(encode_checked_write(register, value))
    except WriteRangeError as exc:
        raise Refused(FailureReason.OUT_OF_RANGE, f"{exc}; not written") from None
    expected = spec.verify_values or ((value if spec.verify_value is None else spec.verify_value),)
    return WritePlan(spec, register, value, words, verify_request(profile, verify_register), verify_register, expected)


def _value_to_write(
    profile: ProfileSpec, spec: CommandSpec, command: CommandMessage, held_limit_a: float | None
) -> float:
    """The engineering value the command writes; Refused if it has none or it is outside the command's range.

    Every action that carries a value (VALUE_UNITS: the limit, the failsafe current and timeout)
    is checked against the profile's min_value..max_value here, then against the register's write
    range when it is encoded.
    """
    unit = VALUE_UNITS.get(command.action)
    if unit is not None:
        if command.value is None:
            raise Refused(FailureReason.INVALID, f"{command.action} needs a value in {unit}; not written")
        low, high = spec.min_value, spec.max_value
        if (low is not None and command.value < low) or (high is not None and command.value > high):
            allowed = f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'} {unit}"
            raise Refused(
                FailureReason.OUT_OF_RANGE,
                f"{command.value:g} {unit} is outside what {profile.name} takes for {command.action} ({allowed}); "
                "not written",
            )
    if spec.value is not None:
        return spec.value
    if command.action == CommandAction.RESUME:
        # Back to the limit the operator set, else to the charger's full range.
        limit = profile.command(CommandAction.SET_CURRENT_LIMIT)
        value = held_limit_a if held_limit_a is not None else (limit.max_value if limit is not None else None)
    else:
        value = command.value
    if value is None:
        raise Refused(
            FailureReason.INVALID, f"profile {profile.slug} gives no value to write for {command.action}; not written"
        )
    return value


def verify_request(profile: ProfileSpec, register: RegisterSpec) -> ReadRequest:
    """The read the poller would plan for this register alone (its explicit block, fixed read size, unit id)."""
    alone = replace(profile, registers=(register,))
    [request] = plan_reads(alone, (register.poll_group,))
    return request


async def execute_command(
    connection: ChargePointConnection,
    profile: ProfileSpec,
    command: CommandMessage,
    *,
    hooks: CommandHooks,
    poller: str,
    held_limit_a: float | None,
    connected: bool,
    settle: Settle | None = None,
) -> CommandResult:
    """Check, claim, write once, settle, read back and compare; the result says what happened and why.

    connected: the connection is usable (False when the charge point's last poll failed: fail at
    once as offline instead of waiting for a reconnect). settle: how to wait the profile's settle
    time (default: a sleep that ends when the connection's stop event is set).
    """

    def failed(reason_code: str, reason: str, read_back: float | None = None) -> CommandResult:
        return CommandResult.failed(command, reason_code, reason, poller=poller, read_back=read_back)

    if command.expired():
        return failed(
            FailureReason.EXPIRED, f"expired at {command.expires_at:%H:%M:%S} UTC before it could be sent; not written"
        )
    try:
        plan = plan_command(profile, command, held_limit_a)
    except Refused as refused:
        return failed(refused.reason_code, refused.reason)
    if not connected:
        return failed(FailureReason.OFFLINE, "the charge point is offline (its last poll failed); not written")
    if not hooks.claim(command):
        return failed(FailureReason.INTERRUPTED, "already claimed by an earlier run of this poller; not written again")
    register, unit = plan.register, plan.register.unit
    what = f"{plan.value:g} {unit}".strip() + f" to {register.name}"
    try:
        await connection.write_registers(register.address, list(plan.words), register.unit_id)
    except PaceInterrupted:
        return failed(FailureReason.INTERRUPTED, "the poller stopped before the write was sent; not written")
    except DeviceException as exc:
        return failed(FailureReason.MODBUS_EXCEPTION, f"the charger refused the write of {what}: {exc.code_name}")
    except ModbusError as exc:
        return failed(
            FailureReason.TIMEOUT,
            f"no answer to the write of {what} ({exc}): it may or may not have been applied; not retried",
        )
    wait = settle or (lambda seconds: wait_unless_stopped(connection.stop or asyncio.Event(), seconds))
    if plan.command.settle_s > 0 and await wait(plan.command.settle_s):
        return failed(FailureReason.INTERRUPTED, f"written ({what}); the poller stopped before the read-back")
    try:
        words = await connection.read(plan.verify)
    except PaceInterrupted:
        return failed(FailureReason.INTERRUPTED, f"written ({what}); the poller stopped before the read-back")
    except DeviceException as exc:
        return failed(
            FailureReason.MODBUS_EXCEPTION,
            f"written ({what}); the read-back of {plan.verify_register.name} was refused: {exc.code_name}",
        )
    except ModbusError as exc:
        return failed(FailureReason.TIMEOUT, f"written ({what}), no read-back: {exc}")
    values, errors = decode_block(plan.verify.registers, plan.verify.address, list(words))
    read = values.get(plan.verify_register.name)
    if plan.verify_register.name in errors:
        return failed(
            FailureReason.READBACK_MISMATCH,
            f"written ({what}); the read-back of {plan.verify_register.name} does not decode: "
            f"{errors[plan.verify_register.name]}",
        )
    number = _number(read)
    if number is not None and any(abs(number - want) <= plan.command.tolerance for want in plan.expected):
        return CommandResult.applied(command, number, poller=poller)
    verify_unit = plan.verify_register.unit
    expected = " or ".join(f"{want:g} {verify_unit}".strip() for want in plan.expected)
    shown = (
        "nothing (not available)"
        if read is None
        else (f"{number:g} {verify_unit}".strip() if number is not None else repr(read))
    )
    return failed(FailureReason.READBACK_MISMATCH, f"expected {expected}, read {shown}", read_back=number)


def _number(value: Value) -> float | None:
    """A read-back as a number (a bit or flag as 0/1); None for text, bytes or not available."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None
