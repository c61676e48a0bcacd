"""The compiled decoder (gateway/profiles/compiled.py) gives exactly what the reference gives.

The reference is decode_block (register by register through codec.decode_value) and
to_telemetry_fields. Random register words for every planned block of every shipped profile, and
for a profile made to hold every type, byte order, mask, scale, 'not available' marker, coils,
overlapping registers and registers the struct path cannot express.
"""

import math
import struct
from dataclasses import asdict, replace
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.choices import ByteOrder, DataType, Function, PollGroup, Role, StatusMatch
from gateway.modbus.planner import ReadRequest, plan_reads
from gateway.profiles.codec import FIXED_LENGTHS, Value
from gateway.profiles.compiled import compile_block, compile_profile
from gateway.profiles.decode import decode_block, to_telemetry_fields
from gateway.profiles.spec import ProfileSpec, RegisterSpec, StatusRule
from gateway.profiles.store import read_spec_file, shipped_profile_files

SHIPPED = {spec.slug: spec for spec in (read_spec_file(path) for path in shipped_profile_files())}

# Words that mean something special: NaN, +/-inf and -0.0 halves, extremes, NUL and spaces.
SPECIAL_WORDS = (0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x7FC0, 0x7F80, 0xFF80, 0x7FF8, 0x7FF0, 0x2020, 0x0001)
WORD = st.one_of(st.sampled_from(SPECIAL_WORDS), st.integers(0, 0xFFFF))
# Printable ASCII in both bytes: every string register of the block decodes, so the compiled path
# runs to the end instead of handing a bad string to the reference.
PRINTABLE_WORD = st.builds(lambda hi, lo: hi << 8 | lo, st.integers(0x20, 0x7E), st.integers(0x20, 0x7E))


def planned(profile: ProfileSpec) -> list[ReadRequest]:
    """The reads the poller plans: the fast group, then the slow group."""
    return plan_reads(profile, (PollGroup.FAST,)) + plan_reads(profile, (PollGroup.SLOW,))


def block_words(request: ReadRequest) -> st.SearchStrategy[list[int] | list[bool]]:
    if request.function in (Function.COIL, Function.DISCRETE_INPUT):
        return st.lists(st.booleans(), min_size=request.count, max_size=request.count)
    return st.one_of(
        st.lists(word, min_size=request.count, max_size=request.count)
        for word in (WORD, PRINTABLE_WORD, st.one_of(PRINTABLE_WORD, st.sampled_from(SPECIAL_WORDS)))
    )


def exact(values: dict[str, Value]) -> list[tuple[str, str]]:
    """Values compared by repr: -0.0 is not 0.0, 1 is not 1.0 or True, NaN equals NaN."""
    return sorted((name, f"{type(value).__name__}:{value!r}") for name, value in values.items())


def reference_record(profile: ProfileSpec, requests: list[ReadRequest], blocks: list) -> tuple[dict, dict]:
    decoded: dict[str, Value] = {}
    for request, words in zip(requests, blocks, strict=True):
        if words is not None:
            decoded.update(decode_block(request.registers, request.address, words)[0])
    return decoded, asdict(to_telemetry_fields(profile, decoded))


def assert_same_record(profile: ProfileSpec, blocks: list) -> None:
    requests = planned(profile)
    decoder = compile_profile(profile, requests)
    for request, words in zip(requests, blocks, strict=True):
        if words is None:
            continue
        want_values, want_errors = decode_block(request.registers, request.address, list(words))
        block = decoder.block_for(request)
        # Without errors the compiled path must do the work itself, not hand it to the reference.
        fallback = {} if want_errors or not block.exact else {"side_effect": AssertionError("fell back")}
        with mock.patch.object(block, "_reference", wraps=block._reference, **fallback):
            got_values, got_errors = decoder.decode_block(request, words)
        assert exact(got_values) == exact(want_values), request
        assert got_errors == want_errors
    _, want_fields = reference_record(profile, requests, blocks)
    got_fields = asdict(decoder.decode(blocks))
    assert repr(got_fields) == repr(want_fields)


def records(profile: ProfileSpec) -> st.SearchStrategy[list]:
    """Words for every planned block; now and then a block that was not read (None)."""
    return st.tuples(*(st.one_of(block_words(request), st.none()) for request in planned(profile))).map(list)


@pytest.mark.parametrize("slug", sorted(SHIPPED))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_shipped_profile_compiled_equals_reference(slug: str, data: st.DataObject) -> None:
    profile = SHIPPED[slug]
    assert_same_record(profile, data.draw(records(profile)))


def every_feature_profile() -> ProfileSpec:
    """Every type in every byte order, with the conversions the codec knows, on overlapping addresses."""
    registers: list[RegisterSpec] = []
    address = 0
    numeric = [t for t in FIXED_LENGTHS if t not in (DataType.BOOL, DataType.BIT)]
    for order in ByteOrder.values:
        for data_type in numeric:
            count = FIXED_LENGTHS[data_type]
            name = f"{data_type}_{order}"
            registers.append(RegisterSpec(name, address, data_type=data_type, byte_order=order))
            integer = not data_type.startswith("float")
            registers.append(  # the same words again, scaled, offset and with a 'not available' marker
                RegisterSpec(
                    f"{name}_scaled",
                    address,
                    data_type=data_type,
                    byte_order=order,
                    scale=0.1,
                    offset=-40.0,
                    unavailable=0 if integer else None,
                    role=Role.TEMPERATURE_C if data_type == DataType.INT16 else "",
                )
            )
            if integer:
                registers.append(
                    RegisterSpec(f"{name}_field", address, data_type=data_type, byte_order=order, mask=0x7F00)
                )
                registers.append(
                    RegisterSpec(f"{name}_whole", address, data_type=data_type, byte_order=order, scale=1, offset=0)
                )
            address += count
        for encoding in ("ascii", "utf-8", "utf-16-be"):
            registers.append(
                RegisterSpec(
                    f"text_{order}_{encoding}",
                    address,
                    data_type=DataType.STRING,
                    byte_order=order,
                    length=3,
                    encoding=encoding,
                )
            )
            address += 3
        registers.append(RegisterSpec(f"raw_{order}", address, data_type=DataType.BYTES, byte_order=order, length=2))
        address += 2
    registers += [RegisterSpec(f"bit_{bit}", address, data_type=DataType.BIT, bit=bit) for bit in (0, 7, 15)]
    registers.append(RegisterSpec("state", address + 1, role=Role.VENDOR_STATUS))
    registers.append(RegisterSpec("fault", address + 2, data_type=DataType.INT16, role=Role.ERROR_CODE))
    registers += [
        RegisterSpec(f"coil_{n}", n, function=Function.COIL, data_type=DataType.BOOL, role=Role.NONE)
        for n in range(0, 20, 3)
    ]
    rules = (
        StatusRule("fault", "0", "F", "faulted", match=StatusMatch.IS_NOT),
        StatusRule("state", "1", "A", "available"),
        StatusRule("bit_0", "1", "B", "preparing"),
        StatusRule("coil_3", "1", "C", "charging"),
        StatusRule("text_ABCD_ascii", "C2", "C", "charging"),
    )
    return ProfileSpec("every-feature", "Every feature", tuple(registers), rules, derived=("power_w",))


EVERY = every_feature_profile()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_type_order_and_conversion_compiled_equals_reference(data: st.DataObject) -> None:
    assert_same_record(EVERY, data.draw(records(EVERY)))


def test_every_feature_profile_is_planned_as_the_struct_path_expects() -> None:
    """The property test above exercises the compiled path, not only its fallback."""
    requests = planned(EVERY)
    assert {request.function for request in requests} == {Function.HOLDING, Function.COIL}
    assert all(compile_block(request).exact for request in requests)


@pytest.mark.parametrize(
    ("order", "wire"),
    [
        (ByteOrder.ABCD, [0x4366, 0x0000]),
        (ByteOrder.CDAB, [0x0000, 0x4366]),
        (ByteOrder.BADC, [0x6643, 0x0000]),
        (ByteOrder.DCBA, [0x0000, 0x6643]),
    ],
)
def test_float32_230_volts_in_every_byte_order(order: str, wire: list[int]) -> None:
    # float32 230.0 = 0x43660000 (struct.pack(">f", 230.0)); how each order lays it on the wire.
    request = ReadRequest(
        Function.HOLDING,
        10,
        3,
        (RegisterSpec("v", 11, data_type=DataType.FLOAT32, byte_order=order), RegisterSpec("n", 10)),
    )
    assert compile_block(request).decode([7, *wire]) == ({"n": 7, "v": 230.0}, {})


def test_nan_and_not_available_decode_to_none() -> None:
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    registers = (
        RegisterSpec("current", 0, data_type=DataType.FLOAT32),
        RegisterSpec("temperature", 2, data_type=DataType.INT16, unavailable=-32768, scale=0.1),
    )
    block = compile_block(ReadRequest(Function.HOLDING, 0, 3, registers))
    assert block.decode([*nan, 0x8000]) == ({"current": None, "temperature": None}, {})
    assert block.decode([0x7F80, 0, 0xFFF6]) == ({"current": math.inf, "temperature": -1.0}, {})


def test_bad_words_are_reported_by_register_as_the_reference_does() -> None:
    registers = (
        RegisterSpec("name", 0, data_type=DataType.STRING, length=2),
        RegisterSpec("count", 2, data_type=DataType.UINT16),
    )
    block = compile_block(ReadRequest(Function.HOLDING, 0, 3, registers))
    assert block.decode([0xC3FF, 0, 5]) == ({"count": 5}, {"name": "bytes c3 ff 00 00 are not valid ascii text"})
    assert block.decode([0x4142, 0, 0x10000]) == ({"name": "AB"}, {"count": "register value 65536 is not 16-bit"})
    assert block.decode([0x4142, 0]) == decode_block(registers, 0, [0x4142, 0])  # a short answer


def test_registers_the_struct_path_cannot_express_are_decoded_by_the_reference() -> None:
    odd = (
        RegisterSpec("bad_bit", 0, data_type=DataType.BIT, bit=16),
        RegisterSpec("bad_order", 1, data_type=DataType.UINT32, byte_order="XYZW"),
        RegisterSpec("outside", 3, data_type=DataType.UINT32),
    )
    request = ReadRequest(Function.HOLDING, 0, 4, odd)
    block = compile_block(request)
    assert not block.exact
    words = [1, 2, 3, 4]
    assert block.decode(words) == decode_block(odd, 0, words)
    assert set(block.decode(words)[1]) == {"bad_bit", "bad_order", "outside"}


def test_status_precedence_and_unknown_status_match_the_reference() -> None:
    profile = SHIPPED["keba-p30"]
    decoder = compile_profile(profile, planned(profile))
    for decoded in ({}, {"error_code": 0}, {"error_code": 262144, "charging_state": 3}, {"charging_state": 99}):
        assert repr(asdict(decoder.telemetry_fields(decoded))) == repr(asdict(to_telemetry_fields(profile, decoded)))
    no_rules = replace(profile, status_rules=())
    assert compile_profile(no_rules, []).telemetry_fields({}).problems == ["profile has no status rules"]


def test_a_request_the_decoder_was_not_compiled_for_is_compiled_on_first_use() -> None:
    profile = SHIPPED["generic-ev-charger"]
    [request] = plan_reads(profile, (PollGroup.FAST,))
    decoder = compile_profile(profile, [])
    words = [0] * request.count
    assert decoder.decode_block(request, words) == decode_block(request.registers, request.address, words)
    assert decoder.block_for(request) is decoder.block_for(request)
