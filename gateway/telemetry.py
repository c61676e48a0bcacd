"""The telemetry record: the one contract between poller, Kafka, consumer and dashboard."""

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from gateway.choices import TELEMETRY_VALUE_ROLES, OperatorStatus
from gateway.profiles.decode import TelemetryFields

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).parent / "schemas" / "telemetry.v2.schema.json"
# Version 1 named the current limit values.max_current_a and had no active_limit_a. Records of it
# may still sit in outboxes and topics written before an upgrade: decode_record upgrades them.
V1_RENAMED_VALUES = {"max_current_a": "current_limit_a"}

Record = dict[str, Any]


class InvalidRecord(ValueError):
    """A message that is not a valid telemetry record."""


def format_ts(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and a Z, as the schema requires."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def build_record(
    *,
    charge_point: str,
    site: str,
    profile: str,
    seq: int,
    fields: TelemetryFields | None,
    error: str | None = None,
    poll_ms: float | None = None,
    moment: datetime | None = None,
    active_limit_a: float | None = None,
) -> Record:
    """Assemble a record; with no fields (nothing could be read) the charge point is offline."""
    moment = moment or datetime.now(UTC)
    if fields is None:
        status, iec, values, extra = OperatorStatus.OFFLINE.value, None, {}, {}
        quality = "bad"
    else:
        status, iec, values, extra = fields.status, fields.iec61851_state, fields.values, fields.extra
        problems = list(fields.problems) + ([error] if error else [])
        error = "; ".join(problems) or None
        quality = "partial" if error else "good"
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "telemetry",
        "charge_point": charge_point,
        "site": site,
        "profile": profile,
        "ts": format_ts(moment),
        "seq": seq,
        "status": status,
        "iec61851_state": iec,
        "values": {role: values.get(role) for role in TELEMETRY_VALUE_ROLES},
        "extra": extra,
        "quality": quality,
        "error": error,
        "poll_ms": None if poll_ms is None else round(poll_ms, 1),
        "active_limit_a": active_limit_a,
    }


def encode_record(record: Record) -> bytes:
    """Compact JSON (orjson). A non-finite float (a float32 register holding NaN) becomes null,
    which the schema's "number or null" admits, instead of failing the whole record."""
    return orjson.dumps(record)


def decode_record(payload: bytes | None) -> Record:
    """Parse and check a Kafka message value; raises InvalidRecord with the reason.

    The hot path is orjson plus the validator compiled from the schema. Only a record that fails
    goes through the reference validator (jsonschema), which names the first wrong field: the
    dead-letter reason stays as precise as before without costing every valid record.
    """
    if payload is None:
        raise InvalidRecord("empty message")
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # Also invalid UTF-8, nesting deeper than orjson's limit (1024) and numbers beyond a double.
        raise InvalidRecord(f"not JSON: {type(exc).__name__}: {_shorten(str(exc))}") from exc
    if isinstance(record, dict) and record.get("schema_version") == 1:
        record = upgrade_v1(record)
    try:
        compiled_validator()(record)
    except fastjsonschema.JsonSchemaException as exc:
        raise InvalidRecord(explain_invalid(record, exc)) from exc
    try:  # the pattern admits 2026-02-30 or 25:00; storage would fail on it later
        parse_ts(record["ts"])
    except ValueError as exc:
        raise InvalidRecord(f"ts: {record['ts']!r} is not a real UTC time: {exc}") from exc
    return record


def upgrade_v1(record: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record in version 2's shape (then validated like any other)."""
    values = record.get("values")
    if isinstance(values, dict):
        values = {V1_RENAMED_VALUES.get(key, key): value for key, value in values.items()}
    return record | {"schema_version": SCHEMA_VERSION, "values": values, "active_limit_a": None}


def explain_invalid(record: Any, exc: Exception) -> str:
    """The reason a record failed the compiled validator, worded by the reference validator."""
    try:
        errors = sorted(schema_validator().iter_errors(record), key=lambda e: list(e.path))
    except RecursionError:  # nesting deep enough for the validator, not for the parser
        return "too deeply nested to validate"
    if not errors:  # the two validators disagree: keep the compiled one's own words
        return _shorten(str(exc))
    first = errors[0]
    where = "/".join(str(p) for p in first.path) or "(record)"
    return f"{where}: {_shorten(first.message)}"


def newest_per_charge_point(records: Iterable[Record]) -> list[Record]:
    """The newest record of each charge point (by ts, then seq: seq restarts with the poller)."""
    newest: dict[str, Record] = {}
    for record in records:
        current = newest.get(record["charge_point"])
        if current is None or (record["ts"], record["seq"]) >= (current["ts"], current["seq"]):
            newest[record["charge_point"]] = record
    return list(newest.values())


def _shorten(text: str, limit: int = 300) -> str:
    """A reason short enough for a log line and a Kafka header."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@cache
def schema() -> dict[str, Any]:
    """The record's JSON Schema, read once: the single source of both validators."""
    return json.loads(SCHEMA_PATH.read_text())


@cache
def compiled_validator() -> Callable[[Any], Any]:
    """The schema compiled to Python once (fastjsonschema): the check every consumed record pays.

    Formats off: "ts" has a strict pattern, and decode_record parses it (rejecting 2026-02-30 with
    its own reason), as the reference validator does (format is an annotation in draft 2020-12).
    """
    return fastjsonschema.compile(schema(), use_default=False, use_formats=False)


@cache
def schema_validator() -> Any:
    """The reference validator (jsonschema, draft 2020-12): checks the schema itself, explains failures."""
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
