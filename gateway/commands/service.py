"""Send an operator command: check it, audit it, publish it to the pollers; and read its outcome.

The one entry point of the page, `manage.py sendcommand` and (later) the API. Every command is
stored as a `Command` row, the refused ones too (failed, with the reason), so the audit shows
every attempt. The server refuses what it can know is wrong (no permission, an action the
charger's profile does not support, a value out of the profile's range); the poller checks range
and access again before it writes (gateway/commands/execute.py).
"""

import logging
import math
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaError

from gateway.choices import OPERATOR_ACTIONS, VALUE_UNITS, CommandAction, CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage
from gateway.conf import setting
from gateway.kafka import web_producer
from gateway.kafka.topics import commands_topic
from gateway.models import ChargePoint, Command
from gateway.profiles.encode import WriteRangeError, check_write_range
from gateway.profiles.spec import CommandSpec, ProfileFormatError, ProfileSpec
from gateway.profiles.store import load_spec
from gateway.telemetry import format_ts

logger = logging.getLogger(__name__)

PERMISSION = "gateway.send_command"
# A web request waits for the publish: a broker that does not answer fails the command in this
# time instead of holding the request (and the command would soon expire anyway).
PUBLISH_TIMEOUT_S = 5.0
UNITS = VALUE_UNITS


class CommandRefused(Exception):
    """The server did not send the command: why (a FailureReason value and the details), and its audit row."""

    def __init__(self, reason_code: str, reason: str, command: Command | None = None) -> None:
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason
        self.command = command


def send_command(
    charge_point: ChargePoint | str,
    action: str,
    value: float | None = None,
    *,
    user: Any = None,
    username: str | None = None,
    via: str = "web",
    expiry_s: float | None = None,
    actions: Collection[str] = tuple(CommandAction.values),
) -> Command:
    """Check, store (pending) and publish one command; returns its row.

    actions: what this entry point may send. The page and the API pass OPERATOR_ACTIONS (their
    buttons); `sendcommand` and code may also send the failsafe set-up of site load management,
    range-checked like a limit.

    Raises CommandRefused, with the row stored as failed, when the command is not permitted,
    not one of `actions`, not supported by the charger's profile, its value is missing,
    superfluous or out of range, or Kafka did not take it.
    """
    slug = charge_point.slug if isinstance(charge_point, ChargePoint) else charge_point
    resolved = _resolve(charge_point)
    who = username or (user.get_username() if user is not None else "")
    now = datetime.now(UTC)
    row = Command(
        charge_point=resolved,
        charge_point_slug=slug[:50],
        site_slug=resolved.site.slug if resolved is not None else "",
        action=action[:32],
        value=value,
        user=user if user is not None and user.is_authenticated else None,
        username=who[:150],
        via=via,
        created_at=now,
        expires_at=now + timedelta(seconds=setting("COMMAND_EXPIRY_S") if expiry_s is None else expiry_s),
    )
    refusal = _refusal(resolved, slug, action, value, user, actions)
    if refusal is not None:
        reason_code, reason = refusal
        if reason_code == FailureReason.NOT_PERMITTED:
            logger.warning("command refused: %s may not send commands (%s to %s)", who or "anonymous", action, slug)
        else:
            logger.info("command refused (%s): %s %s to %s by %s: %s", reason_code, action, value, slug, who, reason)
        _fail(row, reason_code, reason)
        raise CommandRefused(reason_code, reason, row)
    row.save(force_insert=True)
    message = command_message(row)
    try:
        publish_command(message)
    except (KafkaError, OSError, TimeoutError) as exc:
        # The poller never saw it (or, after a timeout, may see it late: its result is then
        # ignored, since the first outcome of a command wins; the reason says so).
        reason = f"could not send the command to Kafka ({type(exc).__name__}: {exc or 'no answer'}); not sent"
        if isinstance(exc, TimeoutError):
            reason = f"Kafka did not confirm the command within {PUBLISH_TIMEOUT_S:g} s; it may still arrive late"
        logger.error("command %s (%s to %s) not sent: %s", row.id, action, slug, reason)
        _fail(row, FailureReason.TIMEOUT, reason)
        raise CommandRefused(FailureReason.TIMEOUT, reason, row) from exc
    logger.info("command %s sent: %s %s to %s by %s via %s", row.id, action, value, slug, who, via)
    return row


def command_message(command: Command) -> CommandMessage:
    """The message the pollers get for a stored command."""
    return CommandMessage(
        id=str(command.id),
        charge_point=command.charge_point_slug,
        site=command.site_slug,
        action=command.action,
        value=command.value,
        user=command.username,
        created_at=command.created_at,
        expires_at=command.expires_at,
    )


def publish_command(message: CommandMessage) -> None:
    """Publish to the commands topic, keyed by charge point, acknowledged by all in-sync replicas
    (the web process's one producer, gateway/kafka/web_producer.py, not a connection per command)."""
    web_producer.send(commands_topic(), message.to_json(), key=message.key, timeout_s=PUBLISH_TIMEOUT_S)


def wait_for_result(command_id: uuid.UUID | str, timeout_s: float, poll_s: float = 0.02) -> Command:
    """The command's row once it is no longer pending, or still pending after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        command = Command.objects.get(id=command_id)
        if command.status != CommandStatus.PENDING or time.monotonic() >= deadline:
            return command
        time.sleep(poll_s)


def command_json(command: Command) -> dict[str, Any]:
    """A command as the page, the live push and `sendcommand --json` show it."""
    return {
        "id": str(command.id),
        "charge_point": command.charge_point_slug,
        "action": command.action,
        "value": command.value,
        "status": command.status,
        "reason_code": command.reason_code or None,
        "reason": command.reason or None,
        "read_back": command.read_back,
        "username": command.username,
        "created_at": _ts(command.created_at),
        "expires_at": _ts(command.expires_at),
        "completed_at": _ts(command.completed_at),
        "latency_ms": command.latency_ms,
    }


def command_controls(
    charge_point: ChargePoint, actions: Collection[str] = OPERATOR_ACTIONS
) -> dict[str, dict[str, Any]]:
    """What the page offers for each of `actions` (its buttons): supported, min, max, unit, and why not.

    {"set_current_limit": {"supported": True, "min": 6.0, "max": 32.0, "unit": "A", "reason": ""},
     "pause": {"supported": False, "min": None, "max": None, "unit": "", "reason": "..."}, ...}
    """
    try:
        spec = load_spec(charge_point.profile)
    except ProfileFormatError as exc:
        spec, problem = None, f"the profile cannot be read: {exc}"
    controls = {}
    for action in actions:
        command = spec.command(action) if spec is not None else None
        reason = problem if spec is None else _unsupported_reason(spec, action, command)
        controls[action] = {
            "supported": not reason,
            "min": command.min_value if command is not None and not reason else None,
            "max": command.max_value if command is not None and not reason else None,
            "unit": UNITS.get(action, ""),
            "reason": reason,
        }
    return controls


def _resolve(charge_point: ChargePoint | str) -> ChargePoint | None:
    if isinstance(charge_point, ChargePoint):
        return charge_point
    return ChargePoint.objects.select_related("site", "profile").filter(slug=charge_point).first()


def _refusal(
    charge_point: ChargePoint | None,
    slug: str,
    action: str,
    value: float | None,
    user: Any,
    actions: Collection[str] = tuple(CommandAction.values),
) -> tuple[str, str] | None:
    """Why the server refuses this command (reason code, details), or None to send it."""
    if user is not None and not user.has_perm(PERMISSION):
        return FailureReason.NOT_PERMITTED, f"{user.get_username() or 'anonymous'} may not send commands"
    if charge_point is None:
        return FailureReason.INVALID, f"no charge point {slug!r}"
    if action not in CommandAction.values:
        return FailureReason.INVALID, f"unknown action {action!r} (one of {', '.join(actions)})"
    if action not in actions:
        return FailureReason.INVALID, (
            f"{action} is not an operator command (one of {', '.join(actions)}): site load management sets it"
        )
    if not charge_point.enabled:
        return FailureReason.OFFLINE, f"{slug} is disabled: no poller polls it"
    try:
        spec = load_spec(charge_point.profile)
    except ProfileFormatError as exc:
        return FailureReason.UNSUPPORTED, f"the profile of {slug} cannot be read: {exc}"
    command = spec.command(action)
    unsupported = _unsupported_reason(spec, action, command)
    if unsupported or command is None:
        return FailureReason.UNSUPPORTED, unsupported
    return _value_problem(spec, command, value)


def _unsupported_reason(spec: ProfileSpec, action: str, command: CommandSpec | None) -> str:
    """Why the profile cannot carry out `action` ("" when it can)."""
    if command is None:
        return f"the profile {spec.slug} declares no {action} command"
    if not command.supported:
        return command.unsupported or f"the profile {spec.slug} names no register for {action}"
    try:
        spec.register(command.register)
    except KeyError:
        return f"the profile {spec.slug} writes {action} to an unknown register {command.register!r}"
    return ""


def _value_problem(spec: ProfileSpec, command: CommandSpec, value: float | None) -> tuple[str, str] | None:
    """An action that carries a value (VALUE_UNITS) needs one within the profile's range; pause and resume take none."""
    unit = VALUE_UNITS.get(command.action)
    if unit is None:
        if value is not None:
            return FailureReason.INVALID, f"{command.action} takes no value"
        return None
    quantity = "a current" if unit == "A" else "a time"
    if value is None:
        return FailureReason.INVALID, f"{command.action} needs a value in {unit}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return FailureReason.INVALID, f"{value!r} is not {quantity} in {unit}"
    low, high = command.min_value, command.max_value
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'} {unit}"
        return FailureReason.OUT_OF_RANGE, f"{value:g} {unit} is outside {bounds}, the range of {spec.slug}"
    if command.value is None:  # the value asked for is what goes on the wire
        register = spec.register(command.register)
        try:
            check_write_range(register, value)
        except WriteRangeError as exc:
            return FailureReason.OUT_OF_RANGE, str(exc)
    return None


def _fail(row: Command, reason_code: str, reason: str) -> None:
    """Store the row as failed (a refused command is audited like any other)."""
    row.status = CommandStatus.FAILED
    row.reason_code = reason_code
    row.reason = reason
    row.completed_at = datetime.now(UTC)
    row.save()


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else format_ts(moment)
