"""Turn raw register blocks into engineering values and the vendor-neutral telemetry fields."""

from dataclasses import dataclass, field

from gateway.choices import TELEMETRY_VALUE_ROLES, DataType, Iec61851State, OperatorStatus, Role
from gateway.profiles.codec import DecodeError, Value, decode_value
from gateway.profiles.spec import ProfileSpec, RegisterSpec

_NUMERIC_TYPES = {
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
    DataType.FLOAT32,
    DataType.FLOAT64,
}
# IEC 61851 state registers carry 0..5 or the ASCII letter itself.
_IEC_BY_CODE = dict(enumerate(Iec61851State.values)) | {ord(s): s for s in Iec61851State.values}


def scaled(register: RegisterSpec, raw: Value) -> Value:
    """Apply scale and offset to a numeric raw value; other types pass through."""
    if raw is None or register.data_type not in _NUMERIC_TYPES:
        return raw
    value = raw * register.scale + register.offset
    if isinstance(value, float) and value.is_integer() and register.scale == 1 and not register.offset:
        return int(value)
    return round(value, 6)


def decode_block(
    registers: tuple[RegisterSpec, ...], start: int, words: list[int] | list[bool]
) -> tuple[dict[str, Value], dict[str, str]]:
    """Decode every register of one read response. Returns (values by name, errors by name)."""
    values: dict[str, Value] = {}
    errors: dict[str, str] = {}
    for register in registers:
        first = register.address - start
        chunk = words[first : first + register.count]
        try:
            raw = decode_value(register.data_type, list(chunk), register.byte_order, bit=register.bit)
        except DecodeError as exc:
            errors[register.name] = str(exc)
            continue
        values[register.name] = scaled(register, raw)
    return values, errors


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
    values: dict[str, float | int | None] = {role: None for role in TELEMETRY_VALUE_ROLES}
    extra: dict[str, Value] = {}
    problems: list[str] = []
    status_code: Value = None
    iec_state: str | None = None
    for register in profile.registers:
        if register.name not in decoded:
            continue
        value = decoded[register.name]
        if register.role == Role.VENDOR_STATUS:
            status_code = value
        elif register.role == Role.IEC61851_STATE:
            iec_state = _IEC_BY_CODE.get(value) if isinstance(value, int) else value
        elif register.role in values:
            values[register.role] = value if not isinstance(value, bool) else int(value)
        elif isinstance(value, bytes):
            extra[register.name] = value.hex()
        else:
            extra[register.name] = value

    status = OperatorStatus.UNAVAILABLE.value
    if status_code is not None:
        mapped = profile.status_codes.get(int(status_code))
        if mapped is None:
            problems.append(f"unknown vendor status code {status_code}")
        else:
            status = mapped.status
            iec_state = iec_state or mapped.iec61851_state
    elif iec_state is not None:
        status = _status_from_iec(iec_state)
    else:
        problems.append("profile has no status register")

    if values[Role.POWER_W] is None and profile.register_for(Role.POWER_W) is None:
        # Explicit in the record: this power was computed, not measured by the charger.
        values[Role.POWER_W] = _derived_power_w(values)
        extra["power_w_derived"] = True
    return TelemetryFields(str(status), iec_state, values, extra, problems)


def _status_from_iec(state: str) -> str:
    return {
        "A": OperatorStatus.AVAILABLE,
        "B": OperatorStatus.PREPARING,
        "C": OperatorStatus.CHARGING,
        "D": OperatorStatus.CHARGING,
        "E": OperatorStatus.FAULTED,
        "F": OperatorStatus.FAULTED,
    }.get(state, OperatorStatus.UNAVAILABLE).value


def _derived_power_w(values: dict[str, float | int | None]) -> float | None:
    """Power from per-phase current × voltage, for profiles that declare no power register."""
    total = 0.0
    for phase in ("l1", "l2", "l3"):
        current = values.get(f"current_{phase}_a")
        voltage = values.get(f"voltage_{phase}_v")
        if current is None or voltage is None:
            return None
        total += current * voltage
    return round(total, 1)
