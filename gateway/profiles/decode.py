"""Turn raw register blocks into engineering values and the vendor-neutral telemetry fields."""

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.choices import TELEMETRY_VALUE_ROLES, DataType, OperatorStatus, Role, StatusMatch
from gateway.profiles.codec import INTEGER_RANGES, DecodeError, Value, decode_value
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


def scaler(register: RegisterSpec) -> Callable[[Value], Value] | None:
    """Raw value → engineering value for one register, folded once: field mask, 'not available'
    marker, scale and offset. None: the raw value is the value (text, bits, plain integers).

    The returned function takes the raw value of the register's type, never None; a NaN float
    (the usual "not available" of float registers) gives None.
    """
    if register.data_type not in NUMERIC_TYPES:
        return None
    integer = register.data_type in INTEGER_RANGES
    mask = register.mask if integer else None  # a field mask only means something on an integer
    shift = mask_shift(mask) if mask is not None else 0
    unavailable, scale, offset = register.unavailable, register.scale, register.offset
    whole = integer and scale == 1 and not offset  # the value stays an integer
    if whole and mask is None and unavailable is None and register.count <= 2:
        return None  # int(raw * 1.0 + 0.0) == raw below 2**53; 64-bit values keep the float's rounding

    def convert(raw: Value) -> Value:
        if raw != raw:  # NaN, the only value unequal to itself
            return None
        if mask is not None:
            raw = (raw & mask) >> shift
        if unavailable is not None and raw == unavailable:
            return None
        value = raw * scale + offset
        return int(value) if whole else round(value, 6)

    return convert


def scaled(register: RegisterSpec, raw: Value) -> Value:
    """Raw value → engineering value: field mask, 'not available' marker, scale and offset."""
    convert = scaler(register)
    return raw if raw is None or convert is None else convert(raw)


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


def code_matches(text: str | None, code: str, is_not: bool) -> bool:
    """Whether a value's status text satisfies a rule's code (a value not read or not available never does)."""
    if text is None:
        return False
    return text != code if is_not else text == code


def rule_matches(rule: StatusRule, decoded: dict[str, Value]) -> bool:
    """Whether a status rule applies to decoded values (a value not read or not available never does)."""
    return code_matches(status_code_text(decoded.get(rule.register)), rule.code, rule.match == StatusMatch.IS_NOT)


class StatusRules:
    """A profile's ordered status rules, folded once; the first rule that matches wins."""

    def __init__(self, profile: ProfileSpec) -> None:
        self.profile = profile
        self.registers = profile.status_registers
        self.rules = tuple(
            (rule.register, rule.code, rule.match == StatusMatch.IS_NOT, (rule.status, rule.iec61851_state, None))
            for rule in profile.status_rules
        )

    def resolve(self, decoded: dict[str, Value]) -> tuple[str, str | None, str | None]:
        """(operator status, IEC 61851 state, problem) for decoded values."""
        texts = {name: status_code_text(decoded.get(name)) for name in self.registers}
        for register, code, is_not, result in self.rules:
            if code_matches(texts[register], code, is_not):
                return result
        if not self.rules:
            return OperatorStatus.UNAVAILABLE.value, None, "profile has no status rules"
        seen = ", ".join(f"{name}={decoded.get(name)!r}" for name in self.registers)
        return OperatorStatus.UNAVAILABLE.value, None, f"unknown status ({seen})"


def resolve_status(profile: ProfileSpec, decoded: dict[str, Value]) -> tuple[str, str | None, str | None]:
    """(operator status, IEC 61851 state, problem) from the profile's ordered status rules."""
    return StatusRules(profile).resolve(decoded)


@dataclass
class TelemetryFields:
    """The profile-dependent part of a telemetry record."""

    status: str
    iec61851_state: str | None
    values: dict[str, float | int | None]
    extra: dict[str, Value] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


_NOT_READ = object()


class TelemetryMap:
    """A profile's mapping of decoded values onto telemetry roles and its status rules, folded once."""

    def __init__(self, profile: ProfileSpec) -> None:
        self.status_rules = StatusRules(profile)
        # (register name, telemetry role or None for `extra`), in profile order: a later register
        # of the same role wins, and `extra` keeps the profile's order.
        self.registers = tuple(
            (register.name, register.role if register.role in TELEMETRY_VALUE_ROLES else None)
            for register in profile.registers
        )
        self.derived = profile.derived
        self.derive_power = Role.POWER_W in profile.derived

    def fields(self, decoded: dict[str, Value]) -> TelemetryFields:
        """Map decoded register values onto telemetry roles and resolve the status."""
        values: dict[str, float | int | None] = dict.fromkeys(TELEMETRY_VALUE_ROLES)
        extra: dict[str, Value] = {}
        for name, role in self.registers:
            value = decoded.get(name, _NOT_READ)
            if value is _NOT_READ:
                continue
            if role is not None and not isinstance(value, (str, bytes)):
                values[role] = int(value) if isinstance(value, bool) else value
            elif isinstance(value, bytes):
                extra[name] = value.hex()
            else:
                extra[name] = value
        status, iec_state, problem = self.status_rules.resolve(decoded)
        problems = [problem] if problem else []
        if self.derive_power:
            # Declared in the profile: this charger has no power register (see docs/profiles.md).
            values[Role.POWER_W] = derived_power_w(values)
            extra["derived"] = list(self.derived)
        return TelemetryFields(status, iec_state, values, extra, problems)


def to_telemetry_fields(profile: ProfileSpec, decoded: dict[str, Value]) -> TelemetryFields:
    """Map decoded register values onto telemetry roles and resolve the status."""
    return TelemetryMap(profile).fields(decoded)


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
