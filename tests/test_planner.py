"""Request planning: fewest reads within the protocol limits."""

from gateway.choices import DataType, Function, PollGroup
from gateway.modbus.planner import MAX_READ_BITS, MAX_READ_REGISTERS, plan_reads
from gateway.profiles.spec import ProfileSpec, ReadBlock, RegisterSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file


def profile(*registers: RegisterSpec, max_gap: int = 8) -> ProfileSpec:
    return ProfileSpec(slug="p", name="p", registers=registers, max_gap=max_gap)


def test_generic_profile_needs_one_fast_and_one_slow_read() -> None:
    spec = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
    fast = plan_reads(spec, (PollGroup.FAST,))
    slow = plan_reads(spec, (PollGroup.SLOW,))
    assert [(r.function, r.address, r.count) for r in fast] == [(Function.HOLDING, 0, 16)]
    assert [(r.function, r.address, r.count) for r in slow] == [(Function.HOLDING, 100, 18)]


def test_gap_up_to_max_gap_is_bridged_and_larger_gap_splits() -> None:
    spec = profile(
        RegisterSpec("a", 0),
        RegisterSpec("b", 9),  # gap of 8 registers: bridged
        RegisterSpec("c", 19),  # gap of 9: a new read
    )
    assert [(r.address, r.count) for r in plan_reads(spec, (PollGroup.FAST,))] == [(0, 10), (19, 1)]
    assert len(plan_reads(spec, (PollGroup.FAST,), max_gap=0)) == 3


def test_functions_are_never_mixed_in_one_read() -> None:
    spec = profile(RegisterSpec("h", 0), RegisterSpec("i", 1, function=Function.INPUT))
    plan = plan_reads(spec, (PollGroup.FAST,))
    assert [(r.function, r.address, r.count) for r in plan] == [(Function.HOLDING, 0, 1), (Function.INPUT, 1, 1)]


def test_reads_stay_within_125_registers() -> None:
    spec = profile(*(RegisterSpec(f"r{i}", i * 2, data_type=DataType.UINT32, length=2) for i in range(200)))
    plan = plan_reads(spec, (PollGroup.FAST,))
    # 62 whole uint32 values (124 registers) fit under 125; a value never straddles two reads.
    assert [r.count for r in plan] == [124, 124, 124, 28]
    assert max(r.count for r in plan) <= MAX_READ_REGISTERS
    assert [len(r.registers) for r in plan] == [62, 62, 62, 14]


def test_bit_reads_stay_within_2000_bits() -> None:
    spec = profile(*(RegisterSpec(f"c{i}", i, function=Function.COIL, data_type=DataType.BOOL) for i in range(4500)))
    plan = plan_reads(spec, (PollGroup.FAST,))
    assert [r.count for r in plan] == [MAX_READ_BITS, MAX_READ_BITS, 500]


def test_poll_groups_are_planned_separately() -> None:
    spec = profile(RegisterSpec("fast", 0), RegisterSpec("slow", 1, poll_group=PollGroup.SLOW))
    assert [r.registers[0].name for r in plan_reads(spec, (PollGroup.FAST,))] == ["fast"]
    assert [r.registers[0].name for r in plan_reads(spec, (PollGroup.SLOW,))] == ["slow"]


def test_write_only_registers_are_never_read() -> None:
    spec = profile(RegisterSpec("state", 0), RegisterSpec("set_current", 1, access="w"))
    assert [r.registers for r in plan_reads(spec, (PollGroup.FAST,))] == [(spec.registers[0],)]


def test_fixed_read_size_gives_one_exact_read_per_value() -> None:
    # KEBA: every value is a uint32 and reads must be exactly 2 registers.
    values = [RegisterSpec(f"v{i}", 1000 + 2 * i, data_type=DataType.UINT32, length=2) for i in range(3)]
    spec = ProfileSpec(slug="k", name="k", registers=tuple(values), fixed_read_size=2)
    assert [(r.address, r.count) for r in plan_reads(spec, (PollGroup.FAST,))] == [(1000, 2), (1002, 2), (1004, 2)]


def test_explicit_blocks_are_read_exactly_as_declared() -> None:
    spec = ProfileSpec(
        slug="b",
        name="b",
        registers=(RegisterSpec("a", 300), RegisterSpec("b", 340), RegisterSpec("outside", 400)),
        read_blocks=(ReadBlock(Function.HOLDING, 300, 46),),
        max_gap=0,
    )
    plan = plan_reads(spec, (PollGroup.FAST,))
    assert [(r.address, r.count, [reg.name for reg in r.registers]) for r in plan] == [
        (300, 46, ["a", "b"]),
        (400, 1, ["outside"]),
    ]


def test_registers_of_another_unit_id_are_read_separately() -> None:
    # Alfen: socket registers on the charge point's unit, station registers on unit 200.
    spec = profile(RegisterSpec("socket", 100), RegisterSpec("station", 101, unit_id=200))
    plan = plan_reads(spec, (PollGroup.FAST,))
    assert [(r.unit_id, r.address) for r in plan] == [(None, 100), (200, 101)]


def test_a_lower_charger_limit_than_125_is_honoured() -> None:
    spec = ProfileSpec(
        slug="s", name="s", registers=tuple(RegisterSpec(f"r{i}", i) for i in range(100)), max_read_registers=40
    )
    assert [r.count for r in plan_reads(spec, (PollGroup.FAST,))] == [40, 40, 20]
