"""Turn raw register blocks into engineering values and the vendor-neutral telemetry fields."""

from dataclasses import dataclass, field

from gateway.choices import TELEMETRY_VALUE_ROLES, DataType, OperatorStatus, Role, StatusMatch
from gateway.profiles.codec import DecodeError, Value, decode_value
from gateway.profiles.spec import ProfileSpec, RegisterSpec, StatusRule

NUMERIC_TYPES = frozenset(
    {
        DataType.INT16,
        DataType.UINT16,
        DataType.INT32,
        DataType.UINT32,
        DataType.INT64,
        DataType.UINT64,
        DataType.FLOAT32,
        DataType.FLOAT64,
    }
)


def mask_shift(mask: int) -> int:
    """Position of the lowest set bit of a field mask (0x7F00 → 8)."""
    return (mask & -mask).bit_length() - 1


def scaled(register: RegisterSpec, raw: Value) -> Value:
    """Raw value → engineering value: field mask, 'not available' marker, scale and offset."""
    if raw is None or register.data_type not in NUMERIC_TYPES:
        return raw
    if register.mask is not None and isinstance(raw, int):
        raw = (raw & register.mask) >> mask_shift(register.mask)
    if register.unavailable is not None and raw == register.unavailable:
        return None
    value = raw * register.scale + register.offset
    if isinstance(raw, int) and register.scale == 1 and not register.offset:
        return int(value)
    return round(value, 6)


def decode_register(register: RegisterSpec, words: list[int] | list[bool]) -> Value:
    """Decode one register's words; raises DecodeError."""
    raw = decode_value(
        register.data_type, list(words), register.byte_order, bit=register.bit, encoding=register.encoding
    )
    return scaled(register, raw)


def decode_block(
    registers: tuple[RegisterSpec, ...], start: int, words: list[int] | list[bool]
) -> tuple[dict[str, Value], dict[str, str]]:
    """Decode every register of one read response. Returns (values by name, errors by name)."""
    values: dict[str, Value] = {}
    errors: dict[str, str] = {}
    for register in registers:
        first = register.address - start
        try:
            values[register.name] = decode_register(register, words[first : first + register.count])
        except DecodeError as exc:
            errors[register.name] = str(exc)
    return values, errors


def status_code_text(value: Value) -> str | None:
    """How a decoded value is compared with a status rule's code."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.hex()
    return str(value).strip()


def rule_matches(rule: StatusRule, decoded: dict[str, Value]) -> bool:
    """Whether a status rule applies to decoded values (a value not read or not available never does)."""
    code = status_code_text(decoded.get(rule.register))
    if code is None:
        return False
    return code != rule.code if rule.match == StatusMatch.IS_NOT else code == rule.code


def resolve_status(profile: ProfileSpec, decoded: dict[str, Value]) -> tuple[str, str | None, str | None]:
    """(operator status, IEC 61851 state, problem) from the profile's ordered status rules."""
    for rule in profile.status_rules:
        if rule_matches(rule, decoded):
            return rule.status, rule.iec61851_state, None
    seen = ", ".join(f"{name}={decoded.get(name)!r}" for name in profile.status_registers)
    if not profile.status_rules:
        return OperatorStatus.UNAVAILABLE.value, None, "profile has no status rules"
    return OperatorStatus.UNAVAILABLE.value, None, f"unknown status ({seen})"


@dataclass
class TelemetryFields:
    """The profile-dependent part of a telemetry record."""

    status: str
    iec61851_state: str | None
    values: dict[str, float | int | None]
    extra: dict[str, Value] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def to_telemetry_fields(profile: ProfileSpec, decoded: dict[str, Value]) -> TelemetryFields:
    """Map decoded register values onto telemetry roles and resolve the status."""
    values: dict[str, float | int | None] = dict.fromkeys(TELEMETRY_VALUE_ROLES)
    extra: dict[str, Value] = {}
    for register in profile.registers:
        if register.name not in decoded:
            continue
        value = decoded[register.name]
        if register.role in values and not isinstance(value, str | bytes):
            values[register.role] = int(value) if isinstance(value, bool) else value
        elif isinstance(value, bytes):
            extra[register.name] = value.hex()
        else:
            extra[register.name] = value
    status, iec_state, problem = resolve_status(profile, decoded)
    problems = [problem] if problem else []
    if Role.POWER_W in profile.derived:
        # Declared in the profile: this charger has no power register (see docs/profiles.md).
        values[Role.POWER_W] = derived_power_w(values)
        extra["derived"] = list(profile.derived)
    return TelemetryFields(status, iec_state, values, extra, problems)


def derived_power_w(values: dict[str, float | int | None]) -> float | None:
    """Power from per-phase current × voltage (phases without a voltage count as absent)."""
    total = 0.0
    seen = False
    for phase in ("l1", "l2", "l3"):
        current = values.get(f"current_{phase}_a")
        voltage = values.get(f"voltage_{phase}_v")
        if current is None or voltage is None:
            continue
        total += current * voltage
        seen = True
    return round(total, 1) if seen else None
