"""A simulated charger's register image: engineering values in, Modbus words out, writes checked.

Pure (no I/O): the server asks for the image on every read and for a checked write on every write.
"""

import math
import random

from pymodbus.constants import ExcCodes

from gateway.choices import DataType, Function, Iec61851State, Role
from gateway.profiles.codec import INTEGER_RANGES, DecodeError, Value, decode_value, encode_value
from gateway.profiles.decode import scaled
from gateway.profiles.spec import ProfileSpec, RegisterSpec

# Modbus function code → the object type it reads or writes.
FUNCTION_BY_CODE: dict[int, str] = {
    1: Function.COIL,
    5: Function.COIL,
    15: Function.COIL,
    2: Function.DISCRETE_INPUT,
    3: Function.HOLDING,
    6: Function.HOLDING,
    16: Function.HOLDING,
    22: Function.HOLDING,
    23: Function.HOLDING,
    4: Function.INPUT,
}
BIT_FUNCTIONS = (Function.COIL, Function.DISCRETE_INPUT)
_FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT64)
_TEXT_TYPES = (DataType.STRING, DataType.BYTES)
Image = dict[str, dict[int, int | bool]]


class WriteRefused(Exception):
    """A write the charger answers with a Modbus exception."""

    def __init__(self, code: ExcCodes, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def status_code_for(profile: ProfileSpec, status: str) -> int | None:
    """The vendor code a charger reports for an operator status: the first code that maps to it."""
    for rule in profile.status_rules:
        if rule.status == status:
            return int(rule.code)
    return None


def iec_state_for(profile: ProfileSpec, status: str, default: str) -> str:
    """The pilot state the profile's status table gives a status, else the behaviour's own."""
    for rule in profile.status_rules:
        if rule.status == status:
            return rule.iec61851_state
    return default


def identity_values(profile: ProfileSpec, rng: random.Random) -> dict[str, str]:
    """Plausible texts for the identity registers (serial number, firmware, ...) of a profile."""
    serial = f"EVD{rng.randrange(10**8):08d}"
    firmware = f"{rng.choice((1, 2))}.{rng.randrange(10)}.{rng.randrange(20)}"
    values = {}
    for register in profile.registers:
        if register.role or register.data_type not in _TEXT_TYPES:
            continue
        name = register.name.lower()
        if "serial" in name:
            text = serial
        elif "firmware" in name or "version" in name or name.startswith("fw"):
            text = firmware
        elif "model" in name or "product" in name:
            text = profile.model or profile.name
        elif "vendor" in name or "manufacturer" in name:
            text = profile.vendor or "evdash"
        else:
            continue
        values[register.name] = text[: 2 * register.length]
    return values


def role_value(profile: ProfileSpec, register: RegisterSpec, status: str, iec_state: str) -> Value:
    """The value of a status or pilot-state register for the given operator status."""
    if register.role == Role.VENDOR_STATUS:
        return status_code_for(profile, status) or 0
    if register.data_type in _TEXT_TYPES:
        return iec_state
    return Iec61851State.values.index(iec_state)


def encode_register(register: RegisterSpec, value: Value, current: int = 0) -> list[int]:
    """Registers (or bits, as 0/1) for one engineering value: raw = (value - offset) / scale."""
    data_type = register.data_type
    raw: Value = value
    if data_type in INTEGER_RANGES or data_type in _FLOAT_TYPES:
        if value is None or isinstance(value, str | bytes):
            raw = None
        else:
            raw = (float(value) - register.offset) / register.scale
        if data_type in INTEGER_RANGES:
            low, high = INTEGER_RANGES[data_type]
            # A charger clips at its register range rather than wrapping round.
            raw = 0 if raw is None or math.isnan(raw) else min(max(round(raw), low), high)
    elif data_type in _TEXT_TYPES:
        raw = value if isinstance(value, bytes) else ("" if value is None else str(value))
        if isinstance(raw, str):
            raw = raw.encode("ascii", errors="replace")
        raw = raw[: 2 * register.length]
    return encode_value(
        data_type,
        raw,
        register.byte_order,
        length=register.length,
        bit=register.bit,
        current=current,
    )


def build_image(profile: ProfileSpec, values: dict[str, Value]) -> Image:
    """Words (or bits) by function and address for engineering values keyed by register name."""
    image: Image = {function: {} for function in Function.values}
    for register in profile.registers:
        block = image[register.function]
        value = values.get(register.name)
        if register.is_bit_function:
            block[register.address] = bool(value)
            continue
        current = int(block.get(register.address, 0))
        words = encode_register(register, value, current)
        for index, word in enumerate(words):
            block[register.address + index] = word
    return image


def defined_addresses(profile: ProfileSpec, function: str) -> set[int]:
    """Every address (or bit) the profile defines for one object type."""
    return {
        register.address + index
        for register in profile.registers
        if register.function == function
        for index in range(register.count)
    }


def check_write(profile: ProfileSpec, function: str, address: int, words: list[int] | list[bool]) -> dict[str, Value]:
    """Decode a write into engineering values by register name, or raise WriteRefused.

    A write must cover whole registers, all of access "rw", each within write_min..write_max.
    """
    end = address + len(words)
    touched = [
        register
        for register in profile.registers
        if register.function == function and register.address < end and register.address + register.count > address
    ]
    covered = {r.address + i for r in touched for i in range(r.count)}
    if not touched or not covered.issuperset(range(address, end)):
        raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, "write to an undefined address")
    accepted: dict[str, Value] = {}
    for register in touched:
        if not register.writable:
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, f"{register.name} is read-only")
        if register.address < address or register.address + register.count > end:
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, f"partial write to {register.name}")
        first = register.address - address
        chunk = [int(w) for w in words[first : first + register.count]]
        try:
            raw = decode_value(register.data_type, chunk, register.byte_order, bit=register.bit)
        except DecodeError as exc:
            raise WriteRefused(ExcCodes.ILLEGAL_VALUE, str(exc)) from exc
        value = scaled(register, raw)
        _check_range(register, value)
        accepted[register.name] = value
    return accepted


def _check_range(register: RegisterSpec, value: Value) -> None:
    bounded = register.write_min is not None or register.write_max is not None
    if not bounded:
        return
    if not isinstance(value, int | float) or math.isnan(value):
        raise WriteRefused(ExcCodes.ILLEGAL_VALUE, f"{register.name}: {value!r} is not a number")
    if register.write_min is not None and value < register.write_min:
        raise WriteRefused(ExcCodes.ILLEGAL_VALUE, f"{register.name}: {value} < minimum")
    if register.write_max is not None and value > register.write_max:
        raise WriteRefused(ExcCodes.ILLEGAL_VALUE, f"{register.name}: {value} > maximum")
