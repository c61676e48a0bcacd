"""Engineering value → the words a real charger of a profile puts on the wire (pure, no I/O).

The inverse of gateway.profiles.decode, with a charger's manners: values beyond a register's
range are clipped, not wrapped; a value the charger does not have is served as its 'not
available' marker (or NaN) where the profile says the charger does that, else as a plausible
constant.
"""

import logging
import math
import struct
from dataclasses import dataclass
from typing import Any

from gateway.choices import DataType
from gateway.profiles.codec import INTEGER_RANGES, Value, encode_value
from gateway.profiles.decode import mask_shift
from gateway.profiles.encode import WriteRangeError, raw_value
from gateway.profiles.spec import ProfileFormatError, ProfileSpec, RegisterSpec

logger = logging.getLogger(__name__)

FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT64)
TEXT_TYPES = (DataType.STRING, DataType.BYTES)
NOT_AVAILABLE_WORD = 0xFFFF  # what Alfen serves for a 16-bit value it does not have
_FLOAT32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


@dataclass(frozen=True)
class SimulatorHints:
    """The `simulator` hints of a profile (documented in docs/profiles.md).

    nan_unavailable: a value the charger does not have reads as NaN (floats), the register's
        `unavailable` marker, or 0xFFFF in every word (integers), as Alfen does.
    mirror_functions: holding and input registers answer both FC03 and FC04 at the same
        addresses, for chargers that clients read with either.
    enable_register: name of a register where writing 0 pauses charging and anything else
        resumes it (KEBA P30 disables with 5014, not with 0 A).
    """

    nan_unavailable: bool = False
    mirror_functions: bool = False
    enable_register: str | None = None

    @classmethod
    def from_profile(cls, profile: ProfileSpec) -> "SimulatorHints":
        hints: dict[str, Any] = dict(profile.simulator or {})
        known = {"nan_unavailable", "mirror_functions", "enable_register"}
        unknown = sorted(set(hints) - known)
        if unknown:
            logger.warning("profile %s: ignoring unknown simulator hint(s) %s", profile.slug, ", ".join(unknown))
        enable = hints.get("enable_register")
        if enable is not None and enable not in {register.name for register in profile.registers}:
            raise ProfileFormatError(
                f"profile {profile.slug}: simulator hint enable_register names no register {enable!r}"
            )
        return cls(
            nan_unavailable=bool(hints.get("nan_unavailable", False)),
            mirror_functions=bool(hints.get("mirror_functions", False)),
            enable_register=enable,
        )


def code_value(register: RegisterSpec, code: str) -> Value:
    """A code written as text (enum key or status rule code) as the value a client decodes.

    "2" and "0x01" become numbers, "C2" stays text for text registers, bytes come from hex.
    """
    if register.data_type == DataType.BYTES:
        try:
            return bytes.fromhex(code)
        except ValueError:
            return None
    if register.data_type in TEXT_TYPES:
        return code
    if register.data_type in (DataType.BOOL, DataType.BIT):
        return code.strip().lower() in ("1", "true")
    for parse in (int, lambda text: int(text, 0), float):
        try:
            return parse(code)
        except ValueError:
            continue
    return None


def plausible_value(register: RegisterSpec, hints: SimulatorHints) -> Value:
    """What a register reads when nothing drives it: its enum's first code, else 0 / empty.

    With nan_unavailable, numbers without an enum are 'not available' (None).
    """
    if register.enum:
        code = code_value(register, next(iter(register.enum)))
        if code is not None:
            return code
    if register.data_type in TEXT_TYPES:
        return ""
    if register.is_bit_function or register.data_type == DataType.BIT:
        return False
    return None if hints.nan_unavailable else 0


def unavailable_words(register: RegisterSpec, hints: SimulatorHints) -> list[int]:
    """The words of a value the charger does not have."""
    if register.unavailable is not None:
        raw = register.unavailable
        if register.mask is not None:
            raw = (raw << mask_shift(register.mask)) & register.mask
        return encode_value(register.data_type, raw, register.byte_order, length=register.length)
    if register.data_type in FLOAT_TYPES:
        return encode_value(register.data_type, None, register.byte_order)
    if hints.nan_unavailable:
        return [NOT_AVAILABLE_WORD] * register.count
    return [0] * register.count


def encode_register(
    register: RegisterSpec, value: Value, hints: SimulatorHints, current: int = 0
) -> list[int] | list[bool]:
    """Words (or bits) for one engineering value; `current` is the word a 'bit' register lives in."""
    data_type = register.data_type
    if register.is_bit_function:
        return [bool(value)]
    if data_type == DataType.BIT:
        return encode_value(data_type, bool(value), bit=register.bit, current=current)
    if data_type in TEXT_TYPES:
        return _encode_text(register, value)
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return unavailable_words(register, hints)
    if data_type in FLOAT_TYPES:
        raw = raw_value(register, value)
        if data_type == DataType.FLOAT32 and isinstance(raw, float) and not math.isinf(raw):
            raw = min(max(raw, -_FLOAT32_MAX), _FLOAT32_MAX)
        return encode_value(data_type, raw, register.byte_order)
    return encode_value(data_type, _clipped_raw(register, value), register.byte_order)


def _clipped_raw(register: RegisterSpec, value: float) -> int:
    """The raw integer (field placed under its mask) of a value clipped to what the register holds."""
    low, high = INTEGER_RANGES[register.data_type]
    if register.mask is not None:
        low, high = 0, register.mask >> mask_shift(register.mask)
    ends = sorted((low * register.scale + register.offset, high * register.scale + register.offset))
    clipped = min(max(float(value), ends[0]), ends[1])
    try:
        return int(raw_value(register, clipped))  # type: ignore[arg-type]
    except WriteRangeError:
        # Float rounding at the very end of a 64-bit range: clip the raw value instead.
        raw = min(max(round((clipped - register.offset) / register.scale), low), high)
        return (raw << mask_shift(register.mask)) & register.mask if register.mask is not None else raw


def _encode_text(register: RegisterSpec, value: Value) -> list[int]:
    if isinstance(value, bytes):
        data = value
    else:
        text = "" if value is None else str(value)
        encoding = register.encoding if register.data_type == DataType.STRING else "ascii"
        data = text.encode(encoding, errors="replace")
    return encode_value(register.data_type, data[: 2 * register.length], register.byte_order, length=register.length)
