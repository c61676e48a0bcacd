"""The telemetry record: the one contract between poller, Kafka, consumer and dashboard."""

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from gateway.choices import TELEMETRY_VALUE_ROLES, OperatorStatus
from gateway.profiles.decode import TelemetryFields

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "telemetry.v1.schema.json"

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
    }


def encode_record(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


def decode_record(payload: bytes | None) -> Record:
    """Parse and check a Kafka message value; raises InvalidRecord with the reason."""
    if payload is None:
        raise InvalidRecord("empty message")
    try:
        record = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers beyond Python's
        # digit limit (int_max_str_digits); RecursionError comes from deeply nested arrays.
        raise InvalidRecord(f"not JSON: {type(exc).__name__}: {_shorten(str(exc))}") from exc
    try:
        errors = sorted(schema_validator().iter_errors(record), key=lambda e: list(e.path))
    except RecursionError as exc:  # nesting deep enough for the validator, not for the parser
        raise InvalidRecord("too deeply nested to validate") from exc
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(record)"
        raise InvalidRecord(f"{where}: {_shorten(first.message)}")
    try:  # the pattern admits 2026-02-30 or 25:00; storage would fail on it later
        parse_ts(record["ts"])
    except ValueError as exc:
        raise InvalidRecord(f"ts: {record['ts']!r} is not a real UTC time: {exc}") from exc
    return record


def _shorten(text: str, limit: int = 300) -> str:
    """A reason short enough for a log line and a Kafka header."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@cache
def schema_validator() -> Any:
    """The compiled JSON Schema validator of the record (jsonschema, draft 2020-12)."""
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
