"""The shipped device profiles against the published register maps they were built from (pure, no DB).

The reference (shared/reference/charger_register_maps.json, beside the checkout) is the source of
truth: every register it lists must ship with the same address, function, type and scale, except
for the unit conversions and byte orders documented in docs/profiles.md and listed below.
"""

import json
import math
import re
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from gateway.choices import Access, ByteOrder, PollGroup, Role
from gateway.modbus.planner import MAX_READ_REGISTERS, plan_reads
from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.decode import decode_block, to_telemetry_fields
from gateway.profiles.encode import encode_for_write
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.profiles.validate import profile_problems

REFERENCE_PATH = Path(settings.BASE_DIR).parent / "shared" / "reference" / "charger_register_maps.json"
DOCS_PATH = Path(settings.BASE_DIR) / "docs" / "profiles.md"

SHIPPED_FILES = shipped_profile_files()
FILE_IDS = [path.stem for path in SHIPPED_FILES]

# Raw units converted to the telemetry record's units (docs/profiles.md, "Units"): (scale, unit).
UNIT_CONVERSIONS = {
    ("vestel-evc04", "total_energy"): (100, "Wh"),  # 0.1 kWh
    ("schneider-evlink-pro-ac", "active_power"): (1000, "W"),  # kW
}
# Byte orders the reference's word_order column cannot express (docs/profiles.md, "Disagreements").
BYTE_ORDER_CHOICES = {
    ("mennekes-amtron-hcc3", "wallbox_name"): ByteOrder.BADC,  # bytes swapped within each register
    ("schneider-evlink-pro-ac", "session_energy"): ByteOrder.CDAB,  # "big(disputed)": device is low word first
    ("schneider-evlink-pro-ac", "error_group_bitfield"): ByteOrder.CDAB,
    ("schneider-evlink-pro-ac", "error_code_bitfield"): ByteOrder.CDAB,
}
# The chargers of the reference, under the slugs it gives (docs/profiles.md, "Shipped profiles").
REFERENCE_SLUGS = [
    "alfen-eve",
    "abb-terra-ac",
    "keba-p30",
    "webasto-next",
    "vestel-evc04",
    "schneider-evlink-pro-ac",
    "mennekes-amtron-hcc3",
]
WORD_ORDERS = {"big": ByteOrder.ABCD, "n/a": ByteOrder.ABCD, "little": ByteOrder.CDAB}
ROLE_UNITS = {
    Role.POWER_W: "W",
    Role.CURRENT_L1_A: "A",
    Role.CURRENT_L2_A: "A",
    Role.CURRENT_L3_A: "A",
    Role.VOLTAGE_L1_V: "V",
    Role.VOLTAGE_L2_V: "V",
    Role.VOLTAGE_L3_V: "V",
    Role.ENERGY_TOTAL_WH: "Wh",
    Role.SESSION_ENERGY_WH: "Wh",
    Role.TEMPERATURE_C: "°C",
    Role.MAX_CURRENT_A: "A",
    Role.SET_CURRENT_A: "A",
}


@cache
def reference_chargers() -> dict[str, dict[str, Any]]:
    """The reference chargers by slug; a missing reference file fails the tests (CI has it)."""
    data = json.loads(REFERENCE_PATH.read_text())
    return {charger["slug"]: charger for charger in data["chargers"]}


@cache
def shipped(slug: str) -> ProfileSpec:
    return read_spec_file(next(path for path in SHIPPED_FILES if path.stem == slug))


@cache
def documented_reads() -> dict[str, tuple[int, int, int]]:
    """(registers, fast reads, slow reads) per slug, from the table in docs/profiles.md."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|[^|\n]*\| (\d+) \| (\d+) \| (\d+) \|", DOCS_PATH.read_text(), re.M)
    return {slug: (int(regs), int(fast), int(slow)) for slug, regs, fast, slow in rows}


def reference_registers() -> list[tuple[str, str]]:
    try:
        return [(slug, reg["name"]) for slug, c in reference_chargers().items() for reg in c["registers"]]
    except FileNotFoundError:
        return [("missing-reference", "missing-reference")]  # fails in the test, not at collection


def decode_wire(spec: ProfileSpec, wire: dict[int, list[int]]) -> dict[str, Any]:
    """Decode every planned read of a profile from one register image (unset words read 0).

    One image serves every function and unit id: no shipped profile reuses an address.
    """
    decoded: dict[str, Any] = {}
    for request in plan_reads(spec, (PollGroup.FAST, PollGroup.SLOW)):
        words = [0] * request.count
        for address, values in wire.items():
            for index, word in enumerate(values):
                if 0 <= address + index - request.address < request.count:
                    words[address + index - request.address] = word
        values, errors = decode_block(request.registers, request.address, words)
        assert errors == {}
        decoded.update(values)
    return decoded


def float_words(value: float, fmt: str = ">f") -> list[int]:
    """The registers of a big-endian (ABCD) float32 or, with ">d", float64."""
    raw = struct.pack(fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


# --- every shipped file ------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_loads_without_problems(path: Path) -> None:
    spec = read_spec_file(path)
    assert spec.slug == path.stem
    assert profile_problems(spec) == []
    assert spec.default_port == 502


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_round_trips_through_the_database_form(path: Path) -> None:
    """Registers are listed in the order the database returns them, so import/export is lossless."""
    spec = read_spec_file(path)
    assert ProfileSpec.from_dict(spec.to_dict()) == spec
    assert list(spec.registers) == sorted(spec.registers, key=lambda r: (r.function, r.address))


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_texts_fit_the_database_columns(path: Path) -> None:
    spec = read_spec_file(path)

    def limit(model: type, name: str) -> int:
        return model._meta.get_field(name).max_length

    for name in ("name", "vendor", "model"):
        assert len(getattr(spec, name)) <= limit(DeviceProfile, name), name
    for reg in spec.registers:
        for name in ("name", "description", "unit"):
            assert len(getattr(reg, name)) <= limit(Register, name), (reg.name, name)
    for rule in spec.status_rules:
        assert len(rule.description) <= limit(StatusRule, "description"), rule
        assert len(rule.code) <= limit(StatusRule, "code"), rule


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_every_readable_register_is_read_exactly_once(path: Path) -> None:
    spec = read_spec_file(path)
    plan = plan_reads(spec, (PollGroup.FAST,)) + plan_reads(spec, (PollGroup.SLOW,))
    times_read = {reg.name: 0 for reg in spec.registers}
    for request in plan:
        assert 1 <= request.count <= MAX_READ_REGISTERS
        if spec.fixed_read_size:
            assert request.count == spec.fixed_read_size
        for reg in request.registers:
            assert request.address <= reg.address
            assert reg.address + reg.count <= request.address + request.count
            assert reg.unit_id == request.unit_id
            times_read[reg.name] += 1
    for reg in spec.registers:
        assert times_read[reg.name] == (1 if reg.readable else 0), reg.name


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_status_and_heartbeat_sources_are_polled_fast(path: Path) -> None:
    """Status needs fresh values; a heartbeat that writes a read value back must not write a stale one."""
    spec = read_spec_file(path)
    for name in spec.status_registers:
        assert spec.register(name).poll_group == PollGroup.FAST, name
        assert spec.register(name).readable, name
    for heartbeat in spec.heartbeats:
        assert spec.register(heartbeat.register).writable
        if heartbeat.value_from:
            assert spec.register(heartbeat.value_from).poll_group == PollGroup.FAST


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_roles_are_in_the_record_units(path: Path) -> None:
    spec = read_spec_file(path)
    for reg in spec.registers:
        if reg.role in ROLE_UNITS:
            assert reg.unit == ROLE_UNITS[reg.role], reg.name
        if reg.role == Role.SET_CURRENT_A:
            assert reg.writable
    if spec.register_for(Role.SET_CURRENT_A) is None:
        # Documented rule: without set_current_a, the writable max_current_a register takes limits.
        assert spec.register_for(Role.MAX_CURRENT_A).writable


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_write_ranges_encode(path: Path) -> None:
    spec = read_spec_file(path)
    for reg in spec.registers:
        for bound in (reg.write_min, reg.write_max):
            if bound is not None:
                encode_for_write(reg, bound)  # raises if the bound does not fit the register


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_read_counts_match_the_docs(path: Path) -> None:
    spec = read_spec_file(path)
    fast = len(plan_reads(spec, (PollGroup.FAST,)))
    slow = len(plan_reads(spec, (PollGroup.SLOW,)))
    assert documented_reads()[spec.slug] == (len(spec.registers), fast, slow)


# --- against the reference ---------------------------------------------------------------


def test_every_reference_charger_is_shipped() -> None:
    assert sorted(reference_chargers()) == sorted(REFERENCE_SLUGS)
    assert set(REFERENCE_SLUGS) <= set(FILE_IDS)


@pytest.mark.parametrize(("slug", "name"), reference_registers())
def test_reference_register_ships_unchanged(slug: str, name: str) -> None:
    charger = reference_chargers()[slug]
    ref = next(reg for reg in charger["registers"] if reg["name"] == name)
    reg = shipped(slug).register(name)
    assert reg.address == ref["address"]
    assert reg.function == ref["function"]
    assert reg.data_type == ref["type"].split("(")[0]
    expected_order = BYTE_ORDER_CHOICES.get((slug, name)) or WORD_ORDERS[ref["word_order"]]
    assert reg.byte_order == expected_order
    scale, unit = UNIT_CONVERSIONS.get((slug, name), (ref["scale"], None))
    assert math.isclose(reg.scale, scale)
    if unit is not None:
        assert reg.unit == unit
    assert reg.access == (Access.WRITE if ref.get("write_only") else ref["access"])
    stated_length = re.search(r"(\d+) registers", ref["description"])
    if reg.data_type in ("string", "bytes"):
        assert reg.length == int(stated_length.group(1))
    assert {_code(k) for k in reg.enum} == {_code(k) for k in ref.get("enum", {})}
    if slug == "alfen-eve":
        assert reg.unit_id == (200 if ref["description"].startswith("UNIT 200") else None)
    else:
        assert reg.unit_id is None
    for source in ref["src"]:
        assert source in reg.description


def _code(key: str) -> int | str:
    try:
        return int(key, 0)
    except ValueError:
        return key


@pytest.mark.parametrize("slug", REFERENCE_SLUGS)
def test_source_cites_every_reference_source(slug: str) -> None:
    spec = shipped(slug)
    charger = reference_chargers()[slug]
    assert spec.default_unit_id == (1 if slug in ("alfen-eve", "abb-terra-ac") else 255)
    for source in charger["sources"]:
        assert f"{source['id']}: {source['ref']}" in spec.source
    assert "DISAGREEMENT" in spec.notes or slug == "vestel-evc04"


# --- status: each charger's evcc mapping, combined through rule order ----------------------

STATUS_CASES = [
    ("alfen-eve", {"availability": 1, "mode3_state": "C2"}, "charging", "C"),
    ("alfen-eve", {"availability": 1, "mode3_state": "D2"}, "charging", "C"),
    ("alfen-eve", {"availability": 0, "mode3_state": "C2"}, "unavailable", "A"),
    ("alfen-eve", {"availability": None, "mode3_state": "A"}, "available", "A"),
    ("alfen-eve", {"availability": 1, "mode3_state": "B1"}, "preparing", "B"),
    ("alfen-eve", {"availability": 1, "mode3_state": "C1"}, "suspended", "B"),
    ("alfen-eve", {"availability": 1, "mode3_state": "E"}, "available", "A"),
    ("alfen-eve", {"availability": 1, "mode3_state": "F"}, "faulted", "F"),
    ("abb-terra-ac", {"charging_state": 0, "socket_lock_state": 0}, "available", "A"),
    ("abb-terra-ac", {"charging_state": 1, "socket_lock_state": 257}, "preparing", "B"),
    ("abb-terra-ac", {"charging_state": 3, "socket_lock_state": 273}, "suspended", "B"),
    ("abb-terra-ac", {"charging_state": 4, "socket_lock_state": 273}, "charging", "C"),
    ("abb-terra-ac", {"charging_state": 5, "socket_lock_state": 257}, "finishing", "B"),
    ("abb-terra-ac", {"charging_state": 5, "socket_lock_state": 273}, "finishing", "B"),
    ("abb-terra-ac", {"charging_state": 5, "socket_lock_state": 17}, "available", "A"),
    ("keba-p30", {"cable_state": 1, "charging_state": 3}, "available", "A"),
    ("keba-p30", {"cable_state": 3, "charging_state": 4}, "available", "A"),
    ("keba-p30", {"cable_state": 7, "charging_state": 3}, "charging", "C"),
    ("keba-p30", {"cable_state": 7, "charging_state": 4}, "faulted", "F"),
    ("keba-p30", {"cable_state": 5, "charging_state": 1}, "preparing", "B"),
    ("keba-p30", {"cable_state": 7, "charging_state": 5}, "suspended", "B"),
    ("webasto-next", {"charge_point_state": 0}, "available", "A"),
    ("webasto-next", {"charge_point_state": 1}, "preparing", "B"),
    ("webasto-next", {"charge_point_state": 3}, "charging", "C"),
    ("webasto-next", {"charge_point_state": 4}, "suspended", "B"),
    ("webasto-next", {"charge_point_state": 7}, "faulted", "F"),
    ("vestel-evc04", {"cable_state": 0, "charging_state": 1, "chargepoint_state": 2}, "available", "A"),
    ("vestel-evc04", {"cable_state": 1, "charging_state": 0, "chargepoint_state": 0}, "available", "A"),
    ("vestel-evc04", {"cable_state": 3, "charging_state": 1, "chargepoint_state": 2}, "charging", "C"),
    ("vestel-evc04", {"cable_state": 2, "charging_state": 0, "chargepoint_state": 1}, "preparing", "B"),
    ("vestel-evc04", {"cable_state": 3, "charging_state": 0, "chargepoint_state": 4}, "suspended", "B"),
    ("vestel-evc04", {"cable_state": 3, "charging_state": 0, "chargepoint_state": 8}, "faulted", "B"),
    ("schneider-evlink-pro-ac", {"ev_state": 6}, "available", "A"),
    ("schneider-evlink-pro-ac", {"ev_state": 1}, "unavailable", "A"),
    ("schneider-evlink-pro-ac", {"ev_state": 3}, "preparing", "B"),
    ("schneider-evlink-pro-ac", {"ev_state": 7}, "preparing", "B"),
    ("schneider-evlink-pro-ac", {"ev_state": 9}, "charging", "C"),
    ("schneider-evlink-pro-ac", {"ev_state": 11}, "faulted", "F"),
    ("mennekes-amtron-hcc3", {"cp_signal_state": 2}, "available", "A"),
    ("mennekes-amtron-hcc3", {"cp_signal_state": 3}, "preparing", "B"),
    ("mennekes-amtron-hcc3", {"cp_signal_state": 5}, "suspended", "C"),
    ("mennekes-amtron-hcc3", {"cp_signal_state": 6}, "charging", "C"),
    ("mennekes-amtron-hcc3", {"cp_signal_state": 8}, "faulted", "D"),
]


@pytest.mark.parametrize(("slug", "decoded", "status", "iec_state"), STATUS_CASES)
def test_status_follows_the_evcc_mapping(slug: str, decoded: dict, status: str, iec_state: str) -> None:
    fields = to_telemetry_fields(shipped(slug), decoded)
    assert (fields.status, fields.iec61851_state, fields.problems) == (status, iec_state, [])


def test_an_unmapped_code_is_a_problem_not_a_guess() -> None:
    fields = to_telemetry_fields(shipped("schneider-evlink-pro-ac"), {"ev_state": 12})
    assert fields.status == "unavailable"
    assert fields.iec61851_state is None
    assert fields.problems == ["unknown status (ev_state=12)"]


# --- golden decodes: wire words → telemetry -----------------------------------------------


def test_alfen_big_endian_floats_strings_and_unavailable_markers() -> None:
    spec = shipped("alfen-eve")
    decoded = decode_wire(
        spec,
        {
            306: [0x4366, 0x0000],  # float32 230.0 V, high word first
            320: float_words(16.0),
            344: float_words(3680.0),
            374: float_words(79_542.8, ">d"),
            1102: float_words(41.5),  # unit 200
            1200: [1],
            1201: [0x4332, 0x0000, 0x0000, 0x0000, 0x0000],  # "C2"
            1206: float_words(16.0),
            1214: [0xFFFF],  # not available
            100: [0x414C, 0x465F, 0x3130, 0x3030] + [0] * 13,  # "ALF_1000"
        },
    )
    assert decoded["station_name"] == "ALF_1000"
    assert decoded["setpoint_accounted"] is None
    fields = to_telemetry_fields(spec, decoded)
    assert fields.values["voltage_l1_v"] == 230.0
    assert fields.values["current_l1_a"] == 16.0
    assert fields.values["power_w"] == 3680.0
    assert fields.values["energy_total_wh"] == pytest.approx(79542.8)
    assert fields.values["temperature_c"] == 41.5
    assert fields.values["max_current_a"] == 16.0
    assert (fields.status, fields.iec61851_state) == ("charging", "C")


def test_alfen_nan_reads_as_missing() -> None:
    decoded = decode_wire(shipped("alfen-eve"), {324: [0x7FC0, 0x0000]})
    assert decoded["current_l3"] is None


def test_abb_state_is_the_high_byte_of_the_second_register() -> None:
    spec = shipped("abb-terra-ac")
    wire = {
        16396: [0x0000, 0x0400],  # state 4 (C2)
        16394: [0x0000, 0x0111],
        16400: [0x0000, 16_000],  # 16 A in mA
        16406: [0x0000, 2304],  # 230.4 V in 0.1 V
        16412: [0x0000, 11_040],
        16414: [0x0000, 4_300],
    }
    fields = to_telemetry_fields(spec, decode_wire(spec, wire))
    assert (fields.status, fields.iec61851_state) == ("charging", "C")
    assert fields.values["current_l1_a"] == 16.0
    assert fields.values["voltage_l1_v"] == pytest.approx(230.4)
    assert fields.values["power_w"] == 11_040
    assert fields.values["session_energy_wh"] == 4_300
    # Bit 7 (charging below the commanded limit) is not part of the state.
    assert decode_wire(spec, {16396: [0x0000, 0x8400]})["charging_state"] == 4


def test_keba_energy_is_in_tenths_of_a_watt_hour() -> None:
    spec = shipped("keba-p30")
    wire = {
        1000: [0, 3],
        1004: [0, 7],
        1036: [0x0001, 0xE240],  # 123456 × 0.1 Wh
        1020: [0x0070, 0x4E00],  # 7 360 000 mW
        1008: [0, 16_000],
        1040: [0, 230],
        1100: [0, 16_000],
    }
    fields = to_telemetry_fields(spec, decode_wire(spec, wire))
    assert fields.values["energy_total_wh"] == pytest.approx(12_345.6)
    assert fields.values["power_w"] == pytest.approx(7_360.0)
    assert fields.values["current_l1_a"] == 16.0
    assert fields.values["voltage_l1_v"] == 230
    assert fields.values["max_current_a"] == 16.0
    assert (fields.status, fields.iec61851_state) == ("charging", "C")
    assert encode_for_write(spec.register("set_charging_current"), 16) == [16_000]


def test_webasto_currents_in_milliamps_and_big_endian_power() -> None:
    spec = shipped("webasto-next")
    wire = {1000: [3], 1008: [16_000], 1010: [15_500], 1012: [16_500], 1020: [0, 11_040], 1036: [0x0001, 0x0000]}
    fields = to_telemetry_fields(spec, decode_wire(spec, wire))
    assert [fields.values[f"current_l{n}_a"] for n in (1, 2, 3)] == [16.0, 15.5, 16.5]
    assert fields.values["power_w"] == 11_040
    assert fields.values["energy_total_wh"] == 65_536
    assert (fields.status, fields.iec61851_state) == ("charging", "C")


def test_vestel_utf16_strings_and_tenth_kwh_energy() -> None:
    spec = shipped("vestel-evc04")
    wire = {
        210: [ord(c) for c in "EVC04"],  # UTF-16BE: one character per register
        1004: [2],
        1001: [1],
        1036: [0, 12_345],  # 1234.5 kWh
        1502: [0, 4_300],
        1014: [231],
    }
    decoded = decode_wire(spec, wire)
    assert decoded["model"] == "EVC04"
    fields = to_telemetry_fields(spec, decoded)
    assert fields.values["energy_total_wh"] == 1_234_500
    assert fields.values["session_energy_wh"] == 4_300
    assert fields.values["voltage_l1_v"] == 231
    assert (fields.status, fields.iec61851_state) == ("charging", "C")


def test_schneider_low_word_first_and_kilowatts() -> None:
    spec = shipped("schneider-evlink-pro-ac")

    def low_word_first(words: list[int]) -> list[int]:
        return list(reversed(words))

    wire = {
        1: [8],
        2999: low_word_first(float_words(16.0)),
        3027: [0x0000, 0x4366],  # 230.0 V, low word first
        3059: low_word_first(float_words(7.36)),  # kW
        3203: [0xD687, 0x0012, 0x0000, 0x0000],  # uint64 1234567 Wh, low word first
    }
    fields = to_telemetry_fields(spec, decode_wire(spec, wire))
    assert fields.values["current_l1_a"] == 16.0
    assert fields.values["voltage_l1_v"] == 230.0
    assert fields.values["power_w"] == pytest.approx(7_360.0, abs=0.01)
    assert fields.values["energy_total_wh"] == 1_234_567
    assert (fields.status, fields.iec61851_state) == ("charging", "C")


def test_mennekes_byte_swapped_name_and_low_word_first_values() -> None:
    spec = shipped("mennekes-amtron-hcc3")
    wire = {
        770: [6],
        781: [4_300, 0],  # session energy, low word first
        783: [0x1E00, 0x0001],  # 0x0001_1E00 = 73 216 W, low word first
        785: [0x4D41, 0x5254, 0x4E4F],  # "AMTRON", two bytes swapped per register
        1024: [16],
    }
    decoded = decode_wire(spec, wire)
    assert decoded["wallbox_name"] == "AMTRON"
    fields = to_telemetry_fields(spec, decoded)
    assert fields.values["session_energy_wh"] == 4_300
    assert fields.values["power_w"] == 73_216
    assert fields.values["max_current_a"] == 16
    assert (fields.status, fields.iec61851_state) == ("charging", "C")
