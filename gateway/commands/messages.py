"""The two messages of the command flow: a command and its result (JSON, keyed by charge point).

    {"type": "command", "schema_version": 1, "id": str, "charge_point": str, "site": str,
     "action": "set_current_limit" | "pause" | "resume", "value": number | null, "user": str,
     "created_at": ts, "expires_at": ts}
    {"type": "command_result", "schema_version": 1, "id": str, "charge_point": str, "site": str,
     "action": str, "value": number | null, "status": "applied" | "failed",
     "reason_code": str | null, "reason": str | null, "read_back": number | null,
     "poller": str, "completed_at": ts, "user": str, "created_at": ts | null}

ts: UTC ISO 8601 with milliseconds and a Z, as in the telemetry record. These shapes are the
contract between the server, the bridge and the pollers; from_json checks them and raises
InvalidMessage with the reason, so a malformed message is refused and logged, never executed.
"""

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.choices import CommandAction, CommandStatus, FailureReason
from gateway.telemetry import format_ts, parse_ts

SCHEMA_VERSION = 1
COMMAND_TYPE = "command"
RESULT_TYPE = "command_result"
SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
TEXT_MAX_CHARS = 500


class InvalidMessage(ValueError):
    """A payload that is not a well-formed command or result."""


@dataclass(frozen=True)
class CommandMessage:
    """One operator command on its way to the poller that owns the charge point."""

    id: str
    charge_point: str
    site: str
    action: str
    value: float | None
    user: str
    created_at: datetime
    expires_at: datetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at

    @property
    def key(self) -> bytes:
        """The Kafka key: commands of one charge point stay in order on one partition."""
        return self.charge_point.encode()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": COMMAND_TYPE,
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "charge_point": self.charge_point,
            "site": self.site,
            "action": self.action,
            "value": self.value,
            "user": self.user,
            "created_at": format_ts(self.created_at),
            "expires_at": format_ts(self.expires_at),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, payload: bytes | None) -> "CommandMessage":
        data = _load(payload, COMMAND_TYPE)
        return cls(
            id=_text(data, "id"),
            charge_point=_slug(data, "charge_point"),
            site=_slug(data, "site"),
            action=_choice(data, "action", CommandAction.values),
            value=_number(data, "value"),
            user=_text(data, "user", allow_empty=True),
            created_at=_ts(data, "created_at"),
            expires_at=_ts(data, "expires_at"),
        )


@dataclass(frozen=True)
class CommandResult:
    """What the poller did with a command: applied (with the value read back) or failed, and why."""

    id: str
    charge_point: str
    site: str
    action: str
    value: float | None
    status: str  # CommandStatus.APPLIED or FAILED
    reason_code: str | None  # a FailureReason value when failed
    reason: str | None  # the details an operator reads ("expected 10 A, read 16 A")
    read_back: float | None
    poller: str
    completed_at: datetime
    # Who sent it and when: the server has both on its row already; they let it write the audit row
    # of a command it never saw, the site controller's (user "controller:<site>"). Optional on the wire.
    user: str = ""
    created_at: datetime | None = None

    @classmethod
    def failed(
        cls, command: CommandMessage, reason_code: str, reason: str, *, poller: str, read_back: float | None = None
    ) -> "CommandResult":
        return cls.of(command, CommandStatus.FAILED, reason_code, reason, read_back, poller)

    @classmethod
    def applied(cls, command: CommandMessage, read_back: float | None, *, poller: str) -> "CommandResult":
        return cls.of(command, CommandStatus.APPLIED, None, None, read_back, poller)

    @classmethod
    def of(
        cls,
        command: CommandMessage,
        status: str,
        reason_code: str | None,
        reason: str | None,
        read_back: float | None,
        poller: str,
    ) -> "CommandResult":
        """The result of `command`, completed now."""
        return cls(
            id=command.id,
            charge_point=command.charge_point,
            site=command.site,
            action=command.action,
            value=command.value,
            status=status,
            reason_code=reason_code,
            reason=reason,
            read_back=read_back,
            poller=poller,
            completed_at=datetime.now(UTC),
            user=command.user,
            created_at=command.created_at,
        )

    @property
    def key(self) -> bytes:
        return self.charge_point.encode()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": RESULT_TYPE,
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "charge_point": self.charge_point,
            "site": self.site,
            "action": self.action,
            "value": self.value,
            "status": self.status,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "read_back": self.read_back,
            "poller": self.poller,
            "completed_at": format_ts(self.completed_at),
            "user": self.user,
            "created_at": None if self.created_at is None else format_ts(self.created_at),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, payload: bytes | None) -> "CommandResult":
        data = _load(payload, RESULT_TYPE)
        status = _choice(data, "status", (CommandStatus.APPLIED.value, CommandStatus.FAILED.value))
        reason_code = data.get("reason_code")
        if reason_code is not None and reason_code not in FailureReason.values:
            raise InvalidMessage(f"reason_code: {reason_code!r} is not one of {', '.join(FailureReason.values)}")
        if status == CommandStatus.FAILED and reason_code is None:
            raise InvalidMessage("reason_code: a failed result needs one")
        return cls(
            id=_text(data, "id"),
            charge_point=_slug(data, "charge_point"),
            site=_slug(data, "site"),
            action=_choice(data, "action", CommandAction.values),
            value=_number(data, "value"),
            status=status,
            reason_code=reason_code,
            reason=_optional_text(data, "reason"),
            read_back=_number(data, "read_back"),
            poller=_text(data, "poller", allow_empty=True),
            completed_at=_ts(data, "completed_at"),
            user=_text(data, "user", allow_empty=True) if "user" in data else "",
            created_at=None if data.get("created_at") is None else _ts(data, "created_at"),
        )


def _load(payload: bytes | None, kind: str) -> dict[str, Any]:
    if payload is None:
        raise InvalidMessage("empty message")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidMessage("not a JSON object")
    if data.get("type") != kind:
        raise InvalidMessage(f"type: expected {kind!r}, got {data.get('type')!r}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InvalidMessage(f"schema_version: expected {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    return data


def _text(data: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = data.get(name)
    if not isinstance(value, str) or (not value and not allow_empty) or len(value) > TEXT_MAX_CHARS:
        raise InvalidMessage(f"{name}: expected text of at most {TEXT_MAX_CHARS} characters, got {value!r:.80}")
    return value


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    return None if data.get(name) is None else _text(data, name, allow_empty=True)


def _slug(data: dict[str, Any], name: str) -> str:
    value = _text(data, name)
    if not SLUG.match(value):
        raise InvalidMessage(f"{name}: {value!r} is not a slug")
    return value


def _choice(data: dict[str, Any], name: str, allowed: Any) -> str:
    value = data.get(name)
    if value not in allowed:
        raise InvalidMessage(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _number(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidMessage(f"{name}: expected a finite number or null, got {value!r:.80}")
    return float(value)


def _ts(data: dict[str, Any], name: str) -> datetime:
    value = _text(data, name)
    try:
        moment = parse_ts(value)
    except ValueError as exc:
        raise InvalidMessage(f"{name}: {value!r} is not a UTC timestamp") from exc
    if moment.tzinfo is None:
        raise InvalidMessage(f"{name}: {value!r} has no time zone")
    return moment
