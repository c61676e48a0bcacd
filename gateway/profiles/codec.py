"""Encode and decode Modbus register values: bytes in, values out, no I/O.

A multi-byte value is written big-endian as bytes A B C D ...; the byte order names how those
bytes lie in the 16-bit registers on the wire:
ABCD (high word first, big endian), BADC (bytes swapped within each word), CDAB (low word first,
"word swap"), DCBA (both). 16-bit values only use the byte swap; strings and raw bytes only the
byte swap too (each register's two bytes), since their "words" are characters in order.
"""

import math
import struct

from gateway.choices import ByteOrder, DataType

FIXED_LENGTHS: dict[str, int] = {
    DataType.BOOL: 1,
    DataType.BIT: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}

# struct codes of the numeric types (without a byte order).
STRUCT_CODES: dict[str, str] = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}

# Byte order x word order -> struct byte orders: pack the registers' 16-bit words with the first,
# then unpack the value from those bytes with the second. Packing a word "<" swaps its two bytes;
# unpacking a value "<" reverses all its bytes, i.e. the word order (and the bytes once more).
# Keyed by (byte order, whether the word order applies: values of two or more registers, not
# strings or raw bytes, whose "words" are characters in order).
WIRE_ORDERS: dict[tuple[str, bool], tuple[str, str]] = {
    (ByteOrder.ABCD, True): (">", ">"),
    (ByteOrder.BADC, True): ("<", ">"),
    (ByteOrder.CDAB, True): ("<", "<"),
    (ByteOrder.DCBA, True): (">", "<"),
    (ByteOrder.ABCD, False): (">", ">"),
    (ByteOrder.BADC, False): ("<", ">"),
    (ByteOrder.CDAB, False): (">", ">"),
    (ByteOrder.DCBA, False): ("<", ">"),
}

# Raw (unscaled) value range of each integer type.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}

Value = int | float | bool | str | bytes | None


class DecodeError(ValueError):
    """Registers that cannot be turned into a value of the declared type."""


def register_count(data_type: str, length: int = 1) -> int:
    """Number of registers (or bits, for bool) one value of this type occupies."""
    return FIXED_LENGTHS.get(data_type, length)


def wire_orders(byte_order: str, words: bool) -> tuple[str, str]:
    """(struct order to pack the registers' words, struct order to unpack the value) for a byte order.

    `words`: whether the word order applies (values of two or more registers; not strings or bytes).
    """
    try:
        return WIRE_ORDERS[(byte_order, words)]
    except KeyError:
        raise DecodeError(f"unknown byte order {byte_order!r}") from None


def registers_to_bytes(registers: list[int], byte_order: str, *, words: bool = True) -> bytes:
    """Reassemble the big-endian bytes A B C D ... of a value from its registers on the wire."""
    word_order, value_order = wire_orders(byte_order, words and len(registers) > 1)
    for reg in reversed(registers) if value_order == "<" else registers:  # the first bad one in value order
        if not 0 <= reg <= 0xFFFF:
            raise DecodeError(f"register value {reg} is not 16-bit")
    raw = struct.pack(f"{word_order}{len(registers)}H", *registers)
    return raw[::-1] if value_order == "<" else raw


def bytes_to_registers(data: bytes, byte_order: str, *, words: bool = True) -> list[int]:
    """Lay the big-endian bytes A B C D ... of a value into registers in the given order."""
    if len(data) % 2:
        data += b"\x00"
    count = len(data) // 2
    word_order, value_order = wire_orders(byte_order, words and count > 1)
    if value_order == "<":
        data = data[::-1]
    return list(struct.unpack(f"{word_order}{count}H", data))


def text_from_bytes(raw: bytes, encoding: str) -> str:
    """A string register's text: decoded, cut at the first NUL, trimmed; raises DecodeError."""
    # Decode before cutting at NUL: in UTF-16 every ASCII character carries a zero byte.
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"bytes {raw.hex(' ')} are not valid {encoding} text") from exc
    return text.split("\x00", 1)[0].strip()


def decode_value(
    data_type: str,
    registers: list[int] | list[bool],
    byte_order: str = ByteOrder.ABCD,
    *,
    bit: int | None = None,
    encoding: str = "ascii",
) -> Value:
    """Decode one raw value (before scale and offset). NaN floats decode to None."""
    expected = register_count(data_type, len(registers))
    if len(registers) != expected:
        raise DecodeError(f"{data_type} needs {expected} register(s), got {len(registers)}")
    if data_type == DataType.BOOL:
        return bool(registers[0])
    if data_type == DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise DecodeError("type 'bit' needs a bit number 0-15")
        return bool((int(registers[0]) >> bit) & 1)
    if data_type in STRUCT_CODES:
        raw = registers_to_bytes([int(r) for r in registers], byte_order)
        (value,) = struct.unpack(">" + STRUCT_CODES[data_type], raw)
        if isinstance(value, float) and math.isnan(value):
            return None
        return value
    if data_type == DataType.STRING:
        raw = registers_to_bytes([int(r) for r in registers], byte_order, words=False)
        return text_from_bytes(raw, encoding)
    if data_type == DataType.BYTES:
        return registers_to_bytes([int(r) for r in registers], byte_order, words=False)
    raise DecodeError(f"unknown data type {data_type!r}")


def encode_value(
    data_type: str,
    value: Value,
    byte_order: str = ByteOrder.ABCD,
    *,
    length: int = 1,
    bit: int | None = None,
    current: int = 0,
    encoding: str = "ascii",
) -> list[int]:
    """Encode one raw value into the registers (or bits) a device would put on the wire.

    `current` is the register's present content, needed to set one bit of it.
    """
    if data_type == DataType.BOOL:
        return [int(bool(value))]
    if data_type == DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise ValueError("type 'bit' needs a bit number 0-15")
        return [(current | (1 << bit)) if value else (current & ~(1 << bit))]
    if data_type in STRUCT_CODES:
        code = STRUCT_CODES[data_type]
        if value is None:
            value = math.nan
        number = float(value) if code in ("f", "d") else int(value)
        return bytes_to_registers(struct.pack(">" + code, number), byte_order)
    if data_type in (DataType.STRING, DataType.BYTES):
        raw = value.encode(encoding) if isinstance(value, str) else bytes(value or b"")
        if len(raw) > 2 * length:
            raise ValueError(f"{len(raw)} bytes do not fit in {length} register(s)")
        raw = raw.ljust(2 * length, b"\x00")
        return bytes_to_registers(raw, byte_order, words=False)
    raise ValueError(f"unknown data type {data_type!r}")
