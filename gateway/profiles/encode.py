"""Engineering value → the registers a write puts on the wire (the inverse of decode.scaled)."""

import math

from gateway.choices import DataType
from gateway.profiles.codec import INTEGER_RANGES, Value, encode_value
from gateway.profiles.decode import mask_shift
from gateway.profiles.spec import RegisterSpec


class WriteRangeError(ValueError):
    """A value outside what the profile allows to be written to this register."""


def raw_value(register: RegisterSpec, value: Value) -> Value:
    """Undo scale and offset (and place a bit field) to get the raw value of a register."""
    if value is None or (
        register.data_type not in INTEGER_RANGES
        and register.data_type
        not in (
            DataType.FLOAT32,
            DataType.FLOAT64,
        )
    ):
        return value
    raw = (float(value) - register.offset) / register.scale
    if register.data_type in INTEGER_RANGES:
        raw = round(raw)
        if register.mask is not None:
            raw = (raw << mask_shift(register.mask)) & register.mask
        low, high = INTEGER_RANGES[register.data_type]
        if not low <= raw <= high:
            raise WriteRangeError(f"{value} {register.unit} does not fit {register.name} ({register.data_type})")
    return raw


def check_write_range(register: RegisterSpec, value: float) -> None:
    """Refuse writes to read-only registers and values the profile does not allow.

    The one check of every write (commands, heartbeats, the simulated charger). Allowed: a value
    listed in `write_values`, or one within `write_min`..`write_max` when either bound is set; a
    register with neither a bound nor values takes anything its type can hold. So "0 (pause) or
    6-32 A" is write_values [0] with write_min 6 and write_max 32.
    """
    if not register.writable:
        raise WriteRangeError(f"{register.name} is read-only")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WriteRangeError(f"{value!r} is not a number {register.name} can take")
    if value in register.write_values:
        return
    allowed = f" (allowed: {allowed_writes(register)})"
    bounded = register.write_min is not None or register.write_max is not None
    if not bounded and register.write_values:
        raise WriteRangeError(f"{value} is not a value {register.name} takes{allowed}")
    if register.write_min is not None and value < register.write_min:
        raise WriteRangeError(
            f"{value} is below the minimum {register.write_min} {register.unit} of {register.name}{allowed}"
        )
    if register.write_max is not None and value > register.write_max:
        raise WriteRangeError(
            f"{value} is above the maximum {register.write_max} {register.unit} of {register.name}{allowed}"
        )


def allowed_writes(register: RegisterSpec) -> str:
    """The values a register takes, as an operator reads them: "0 or 6..32 A"."""
    parts = [f"{value:g}" for value in register.write_values]
    if register.write_min is not None or register.write_max is not None:
        low = "" if register.write_min is None else f"{register.write_min:g}"
        high = "" if register.write_max is None else f"{register.write_max:g}"
        parts.append(f"{low}..{high}")
    text = " or ".join(parts) or "any value"
    return f"{text} {register.unit}".strip()


def encode_for_write(register: RegisterSpec, value: Value) -> list[int]:
    """Registers for a write of an engineering value (all of a multi-register value in one write)."""
    return encode_value(
        register.data_type,
        raw_value(register, value),
        register.byte_order,
        length=register.length,
        bit=register.bit,
        encoding=register.encoding,
    )


def encode_checked_write(register: RegisterSpec, value: float) -> list[int]:
    """The registers of a write the profile allows: check_write_range, then encode_for_write.

    Raises WriteRangeError before anything is encoded, so a refused value never reaches the wire;
    every write path (commands, heartbeats) should take its words from here.
    """
    check_write_range(register, value)
    return encode_for_write(register, value)
