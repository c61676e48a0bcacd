"""Engineering value → the registers a write puts on the wire (the inverse of decode.scaled)."""

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
    """Refuse writes to read-only registers and values outside the profile's write range."""
    if not register.writable:
        raise WriteRangeError(f"{register.name} is read-only")
    if register.write_min is not None and value < register.write_min:
        raise WriteRangeError(f"{value} is below the minimum {register.write_min} {register.unit} of {register.name}")
    if register.write_max is not None and value > register.write_max:
        raise WriteRangeError(f"{value} is above the maximum {register.write_max} {register.unit} of {register.name}")


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
