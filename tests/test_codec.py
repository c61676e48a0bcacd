"""Encode → decode round trips for every type and byte order, and golden vectors from the wire."""

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.choices import ByteOrder, DataType
from gateway.profiles.codec import FIXED_LENGTHS, INTEGER_RANGES, DecodeError, decode_value, encode_value

ORDERS = list(ByteOrder.values)


@pytest.mark.parametrize("data_type", list(INTEGER_RANGES))
@pytest.mark.parametrize("order", ORDERS)
@given(data=st.data())
def test_integers_round_trip(data: st.DataObject, data_type: str, order: str) -> None:
    low, high = INTEGER_RANGES[data_type]
    value = data.draw(st.integers(low, high))
    registers = encode_value(data_type, value, order)
    assert len(registers) == FIXED_LENGTHS[data_type]
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode_value(data_type, registers, order) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(width=32, allow_nan=False))
def test_float32_round_trips(order: str, value: float) -> None:
    assert decode_value(DataType.FLOAT32, encode_value(DataType.FLOAT32, value, order), order) == value


@pytest.mark.parametrize("order", ORDERS)
@given(value=st.floats(allow_nan=False))
def test_float64_round_trips(order: str, value: float) -> None:
    assert decode_value(DataType.FLOAT64, encode_value(DataType.FLOAT64, value, order), order) == value


@pytest.mark.parametrize("order", ORDERS)
@given(text=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20))
def test_strings_round_trip(order: str, text: str) -> None:
    registers = encode_value(DataType.STRING, text, order, length=10)
    assert len(registers) == 10
    assert decode_value(DataType.STRING, registers, order) == text


@given(raw=st.binary(min_size=8, max_size=8))
def test_bytes_round_trip(raw: bytes) -> None:
    assert decode_value(DataType.BYTES, encode_value(DataType.BYTES, raw, length=4)) == raw


@given(word=st.integers(0, 0xFFFF), bit=st.integers(0, 15), value=st.booleans())
def test_bit_within_register(word: int, bit: int, value: bool) -> None:
    [updated] = encode_value(DataType.BIT, value, bit=bit, current=word)
    assert decode_value(DataType.BIT, [updated], bit=bit) is value
    # The other 15 bits are left as they were.
    assert updated & ~(1 << bit) == word & ~(1 << bit)


# float32 230.0 V is 0x43660000; how each order puts it on the wire.
@pytest.mark.parametrize(
    ("order", "wire"),
    [
        (ByteOrder.ABCD, [0x4366, 0x0000]),  # Alfen 306/307 (big endian, vendor doc)
        (ByteOrder.CDAB, [0x0000, 0x4366]),  # low word first (Schneider, Mennekes style)
        (ByteOrder.BADC, [0x6643, 0x0000]),
        (ByteOrder.DCBA, [0x0000, 0x6643]),
    ],
)
def test_golden_float32_230_volts(order: str, wire: list[int]) -> None:
    assert encode_value(DataType.FLOAT32, 230.0, order) == wire
    assert decode_value(DataType.FLOAT32, wire, order) == 230.0


def test_golden_uint32_energy_high_word_first() -> None:
    # 123456789 Wh = 0x075BCD15: big-endian meters send 0x075B then 0xCD15.
    assert decode_value(DataType.UINT32, [0x075B, 0xCD15], ByteOrder.ABCD) == 123_456_789
    assert decode_value(DataType.UINT32, [0xCD15, 0x075B], ByteOrder.CDAB) == 123_456_789


def test_golden_ascii_string_two_chars_per_register() -> None:
    # "NG910" zero-terminated, 2 ASCII chars per register (Alfen identity strings).
    assert decode_value(DataType.STRING, [0x4E47, 0x3931, 0x3000, 0x0000]) == "NG910"
    # Byte-swapped registers (Mennekes strings) read with BADC.
    assert decode_value(DataType.STRING, [0x474E, 0x3139, 0x0030], ByteOrder.BADC) == "NG910"


def test_nan_float_decodes_to_none() -> None:
    nan_registers = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    assert decode_value(DataType.FLOAT32, nan_registers) is None


def test_wrong_register_count_is_a_clear_error() -> None:
    with pytest.raises(DecodeError, match="float32 needs 2 register"):
        decode_value(DataType.FLOAT32, [1])


def test_unknown_byte_order_is_rejected() -> None:
    with pytest.raises(DecodeError, match="unknown byte order"):
        decode_value(DataType.UINT32, [1, 2], "XYZW")


def test_invalid_text_is_a_decode_error_not_garbage() -> None:
    with pytest.raises(DecodeError, match="not valid ascii text"):
        decode_value(DataType.STRING, [0xC3FF])


def test_utf16_strings_one_character_per_register() -> None:
    # Vestel: "EVC04" as UTF-16BE, zero-padded.
    assert decode_value(DataType.STRING, [0x45, 0x56, 0x43, 0x30, 0x34, 0, 0], encoding="utf-16-be") == "EVC04"
