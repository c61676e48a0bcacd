"""The shipped device profiles against the published register maps they were built from (no DB).

The reference (tests/reference/charger_register_maps.json, a verbatim copy of shared/reference) is the source of
truth: every register it lists must ship with the same address, function, type and scale, except
for the unit conversions and byte orders documented in docs/profiles.md and listed below.
"""

import dataclasses
import json
import math
import re
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from gateway.choices import Access, ByteOrder, CommandAction, PollGroup, Role, StatusMatch
from gateway.modbus.planner import MAX_READ_REGISTERS, plan_reads
from gateway.modbus.poller import ChargePointConfig, ChargePointPoller
from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.decode import decode_block, rule_matches, to_telemetry_fields
from gateway.profiles.encode import WriteRangeError, check_write_range, encode_for_write
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.spec import StatusRule as RuleSpec
from gateway.profiles.store import load_spec, read_spec_file, shipped_profile_files
from gateway.profiles.validate import profile_problems
from gateway.simulator.fleet import SimulatorFleet

# A verbatim copy of shared/reference (tests/reference/README.md), so a fresh clone has it.
REFERENCE_PATH = Path(settings.BASE_DIR) / "tests" / "reference" / "charger_register_maps.json"
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
    Role.CURRENT_LIMIT_A: "A",
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
    assert spec.status_registers, spec.slug
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
    # The limit is written where the set_current_limit command says, in A (docs/profiles.md, Commands).
    limit = spec.command(CommandAction.SET_CURRENT_LIMIT)
    assert limit is not None and limit.supported
    assert spec.register(limit.register).writable and spec.register(limit.register).unit == "A"


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
    ("keba-p30", {"cable_state": 3, "charging_state": 4, "error_code": 0}, "faulted", "F"),
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
    ("vestel-evc04", {"cable_state": 3, "charging_state": 0, "chargepoint_state": 8}, "faulted", "F"),
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
    fields = to_telemetry_fields(shipped("schneider-evlink-pro-ac"), {"ocpp_status": 3, "ev_state": 12})
    assert fields.status == "unavailable"
    assert fields.iec61851_state is None
    assert fields.problems == ["unknown status (ocpp_status=3, ev_state=12)"]


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
    assert fields.values["current_limit_a"] == 16.0
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
    assert fields.values["current_limit_a"] == 16.0
    assert (fields.status, fields.iec61851_state) == ("charging", "C")
    assert encode_for_write(spec.register("set_charging_current"), 16) == [16_000]


def test_webasto_currents_in_milliamps_and_big_endian_power() -> None:
    spec = shipped("webasto-next")
    wire = {
        1000: [3],
        1002: [1],  # EVSE running (0 = starting reads as unavailable)
        1008: [16_000],
        1010: [15_500],
        1012: [16_500],
        1020: [0, 11_040],
        1036: [0x0001, 0x0000],
    }
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
        150: [3],  # OCPP status Charging (0 = init reads as unavailable)
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
    assert fields.values["current_limit_a"] == 16
    assert (fields.status, fields.iec61851_state) == ("charging", "C")


# --- status precedence: faults, then unavailable, then connector states (docs/profiles.md) ------
#
# Driven by the vendors' codes, looked up by their meaning in the reference, encoded into register
# words by hand from the reference's address, type and word order (not by our codec), then read
# as the poller reads them (planned reads, decode_block) and resolved with the profile's rules.


def ref_register(slug: str, name: str) -> dict[str, Any]:
    return next(reg for reg in reference_chargers()[slug]["registers"] if reg["name"] == name)


def ref_code(slug: str, register: str, meaning: str) -> int | str:
    """The code the reference documents with this meaning (exact text, else the one containing it)."""
    enum = ref_register(slug, register)["enum"]
    exact = [code for code, text in enum.items() if text.lower() == meaning.lower()]
    hits = exact or [code for code, text in enum.items() if meaning.lower() in text.lower()]
    assert len(hits) == 1, (slug, register, meaning, hits)
    return _code(hits[0])


def hand_words(slug: str, name: str, code: int | str) -> tuple[int, list[int]]:
    """(address, words) a charger puts on the wire for a code, from the reference's description."""
    if slug == "generic-ev-charger":  # evdash's own map: uint16 holding registers 0 (status) and 1 (error code)
        return {"status": 0, "error_code": 1}[name], [int(code)]
    ref = ref_register(slug, name)
    address, data_type = ref["address"], ref["type"]
    if data_type == "string":
        raw = str(code).encode("ascii").ljust(2 * int(re.search(r"(\d+) registers", ref["description"])[1]), b"\0")
        return address, [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if "byte field" in data_type:  # ABB 400Ch: the state is the high byte of the second register
        return address, [0, int(code) << 8]
    if (slug, name) == ("abb-terra-ac", "error_code"):  # HA's codes are of the first register (reference)
        return address, [int(code), 0]
    if data_type.startswith(("uint32", "int32")):
        high, low = divmod(int(code), 0x10000)
        return address, [low, high] if ref["word_order"].startswith("little") else [high, low]
    return address, [int(code)]


def resolved(slug: str, codes: dict[str, int | str]) -> tuple[str, str | None, list[str]]:
    """The status the poller resolves from these codes on the wire (every status register set)."""
    spec = shipped(slug)
    missing = set(spec.status_registers) - set(codes)
    assert not missing, f"{slug}: the case leaves status registers {missing} unset"
    wire = dict(hand_words(slug, name, code) for name, code in codes.items())
    fields = to_telemetry_fields(spec, decode_wire(spec, wire))
    return fields.status, fields.iec61851_state, fields.problems


@dataclass(frozen=True)
class Precedence:
    """One charger's documented states: healthy values, three situations, faults and unavailable states."""

    healthy: dict[str, int | str]  # operative, no error
    contexts: dict[str, dict[str, int | str]]  # "no vehicle", "vehicle", "charging"
    context_status: dict[str, str]  # what each context alone resolves to (positive control)
    faults: list[tuple[str, int | str, str]]  # (register, code, IEC state) the vendor documents as an error
    unavailable: list[tuple[str, int | str]]  # disabled, reserved, out of order, start-up


def precedence_table() -> dict[str, Precedence]:
    r = ref_code
    return {
        "alfen-eve": Precedence(
            healthy={"availability": r("alfen-eve", "availability", "operative")},
            contexts={
                "no vehicle": {"mode3_state": "A"},
                "vehicle": {"mode3_state": "B1"},
                "charging": {"mode3_state": "C2"},
            },
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[("mode3_state", r("alfen-eve", "mode3_state", "error state"), "F")],
            unavailable=[("availability", r("alfen-eve", "availability", "inoperative"))],
        ),
        "abb-terra-ac": Precedence(
            healthy={"error_code": r("abb-terra-ac", "error_code", "no_error")},
            contexts={
                "no vehicle": {
                    "charging_state": r("abb-terra-ac", "charging_state", "idle"),
                    "socket_lock_state": r("abb-terra-ac", "socket_lock_state", "no cable plugged"),
                },
                "vehicle": {
                    "charging_state": r("abb-terra-ac", "charging_state", "pending authorization"),
                    "socket_lock_state": r(
                        "abb-terra-ac", "socket_lock_state", "cable connected to station and EV, locked"
                    ),
                },
                "charging": {
                    "charging_state": r("abb-terra-ac", "charging_state", "energy delivering"),
                    "socket_lock_state": r(
                        "abb-terra-ac", "socket_lock_state", "cable connected to station and EV, locked"
                    ),
                },
            },
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[
                ("error_code", r("abb-terra-ac", "error_code", "over_current"), "F"),
                ("error_code", r("abb-terra-ac", "error_code", "residual_current_detected"), "F"),
            ],
            unavailable=[],  # the Terra AC documents no unavailable state
        ),
        "keba-p30": Precedence(
            healthy={"error_code": 0},  # "0 = no error" (reference)
            contexts={
                "no vehicle": {
                    "cable_state": r("keba-p30", "cable_state", "no cable"),
                    "charging_state": r("keba-p30", "charging_state", "ready, waiting for EV"),
                },
                "vehicle": {
                    "cable_state": r("keba-p30", "cable_state", "cable at station and EV, not locked"),
                    "charging_state": r("keba-p30", "charging_state", "ready, waiting for EV"),
                },
                "charging": {
                    "cable_state": r("keba-p30", "cable_state", "cable at station and EV, locked (charging)"),
                    "charging_state": r("keba-p30", "charging_state", "charging"),
                },
            },
            context_status={"no vehicle": "available", "vehicle": "suspended", "charging": "charging"},
            faults=[
                ("charging_state", r("keba-p30", "charging_state", "error"), "F"),
                ("error_code", 262_144, "F"),  # the guide's example: 0x40000 = error group 4 (reference)
            ],
            unavailable=[("charging_state", r("keba-p30", "charging_state", "start-up"))],
        ),
        "webasto-next": Precedence(
            healthy={
                "evse_state": r("webasto-next", "evse_state", "running"),
                "evse_error_code": r("webasto-next", "evse_error_code", "no error"),
            },
            contexts={
                "no vehicle": {
                    "charge_point_state": r("webasto-next", "charge_point_state", "no vehicle attached"),
                    "cable_state": r("webasto-next", "cable_state", "no cable"),
                    "charge_state": r("webasto-next", "charge_state", "idle"),
                },
                "vehicle": {
                    "charge_point_state": r("webasto-next", "charge_point_state", "vehicle attached, no permission"),
                    "cable_state": r("webasto-next", "cable_state", "cable attached, car attached"),
                    "charge_state": r("webasto-next", "charge_state", "idle"),
                },
                "charging": {
                    "charge_point_state": r("webasto-next", "charge_point_state", "charging"),
                    "cable_state": r("webasto-next", "cable_state", "lock active"),
                    "charge_state": r("webasto-next", "charge_state", "charging"),
                },
            },
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[
                ("evse_state", r("webasto-next", "evse_state", "error"), "F"),
                ("charge_point_state", r("webasto-next", "charge_point_state", "charging error"), "F"),
                ("evse_error_code", r("webasto-next", "evse_error_code", "PB29 over temperature"), "F"),
            ],
            unavailable=[
                ("evse_state", r("webasto-next", "evse_state", "starting")),
                ("charge_point_state", r("webasto-next", "charge_point_state", "charging station reserved")),
            ],
        ),
        "vestel-evc04": Precedence(
            healthy={},
            contexts={
                "no vehicle": {
                    "cable_state": r("vestel-evc04", "cable_state", "not connected"),
                    "charging_state": r("vestel-evc04", "charging_state", "not charging"),
                    "chargepoint_state": r("vestel-evc04", "chargepoint_state", "Available"),
                },
                "vehicle": {
                    "cable_state": r("vestel-evc04", "cable_state", "cable and vehicle connected"),
                    "charging_state": r("vestel-evc04", "charging_state", "not charging"),
                    "chargepoint_state": r("vestel-evc04", "chargepoint_state", "Preparing"),
                },
                "charging": {
                    "cable_state": r("vestel-evc04", "cable_state", "cable locked"),
                    "charging_state": r("vestel-evc04", "charging_state", "charging"),
                    "chargepoint_state": r("vestel-evc04", "chargepoint_state", "Charging"),
                },
            },
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[("chargepoint_state", r("vestel-evc04", "chargepoint_state", "Faulted"), "F")],
            unavailable=[
                ("chargepoint_state", r("vestel-evc04", "chargepoint_state", "Unavailable")),
                ("chargepoint_state", r("vestel-evc04", "chargepoint_state", "Reserved")),
            ],
        ),
        "schneider-evlink-pro-ac": Precedence(
            healthy={},
            contexts={
                "no vehicle": {
                    "ev_state": r("schneider-evlink-pro-ac", "ev_state", "available, ready to charge"),
                    "ocpp_status": r("schneider-evlink-pro-ac", "ocpp_status", "available"),
                    "ev_presence": r("schneider-evlink-pro-ac", "ev_presence", "EV not present"),
                },
                "vehicle": {
                    "ev_state": r("schneider-evlink-pro-ac", "ev_state", "EV connected, not ready to charge"),
                    "ocpp_status": r("schneider-evlink-pro-ac", "ocpp_status", "preparing"),
                    "ev_presence": r("schneider-evlink-pro-ac", "ev_presence", "EV present"),
                },
                "charging": {
                    "ev_state": r("schneider-evlink-pro-ac", "ev_state", "charging EV"),
                    "ocpp_status": r("schneider-evlink-pro-ac", "ocpp_status", "charging"),
                    "ev_presence": r("schneider-evlink-pro-ac", "ev_presence", "EV present"),
                },
            },
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[
                ("ocpp_status", r("schneider-evlink-pro-ac", "ocpp_status", "faulted"), "F"),
                ("ev_state", r("schneider-evlink-pro-ac", "ev_state", "control pilot state invalid"), "F"),
                ("ev_state", r("schneider-evlink-pro-ac", "ev_state", "fault on control circuit"), "F"),
            ],
            unavailable=[
                ("ocpp_status", r("schneider-evlink-pro-ac", "ocpp_status", "unavailable")),
                ("ocpp_status", r("schneider-evlink-pro-ac", "ocpp_status", "reserved")),
                ("ocpp_status", r("schneider-evlink-pro-ac", "ocpp_status", "init")),
                ("ev_state", r("schneider-evlink-pro-ac", "ev_state", "not available")),
            ],
        ),
        "mennekes-amtron-hcc3": Precedence(
            healthy={"error_code": r("mennekes-amtron-hcc3", "error_code", "no error")},
            contexts={
                "no vehicle": {
                    "cp_signal_state": r("mennekes-amtron-hcc3", "cp_signal_state", "A1"),
                    "amtron_state": r("mennekes-amtron-hcc3", "amtron_state", "idle"),
                },
                "vehicle": {
                    "cp_signal_state": r("mennekes-amtron-hcc3", "cp_signal_state", "B1"),
                    "amtron_state": r("mennekes-amtron-hcc3", "amtron_state", "standby authorize"),
                },
                "charging": {
                    "cp_signal_state": r("mennekes-amtron-hcc3", "cp_signal_state", "C2"),
                    "amtron_state": r("mennekes-amtron-hcc3", "amtron_state", "charging"),
                },
            },
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[
                ("amtron_state", r("mennekes-amtron-hcc3", "amtron_state", "error"), "F"),
                ("error_code", r("mennekes-amtron-hcc3", "error_code", "controller fault"), "F"),
                ("error_code", r("mennekes-amtron-hcc3", "error_code", "unknown error"), "F"),
                # D1: the pilot is in D and the AMTRON cannot ventilate; evcc reports an error (reference).
                ("cp_signal_state", r("mennekes-amtron-hcc3", "cp_signal_state", "D1"), "D"),
                ("cp_signal_state", r("mennekes-amtron-hcc3", "cp_signal_state", "D2"), "D"),
            ],
            unavailable=[
                ("error_code", r("mennekes-amtron-hcc3", "error_code", "device startup")),
                ("error_code", r("mennekes-amtron-hcc3", "error_code", "maintenance")),
                ("error_code", r("mennekes-amtron-hcc3", "error_code", "disabled")),
            ],
        ),
        # evdash's own map (its profile's source): status 0 no vehicle, 1 connected, 2 charging,
        # 5 fault, 6 disabled by the operator; error_code 0 = no error.
        "generic-ev-charger": Precedence(
            healthy={"error_code": 0},
            contexts={"no vehicle": {"status": 0}, "vehicle": {"status": 1}, "charging": {"status": 2}},
            context_status={"no vehicle": "available", "vehicle": "preparing", "charging": "charging"},
            faults=[("status", 5, "F"), ("error_code", 16, "F")],
            unavailable=[("status", 6)],
        ),
    }


PRECEDENCE_SLUGS = sorted(FILE_IDS)
CONTEXTS = ("no vehicle", "vehicle", "charging")


def test_precedence_covers_every_shipped_profile() -> None:
    table = precedence_table()
    assert sorted(table) == PRECEDENCE_SLUGS
    assert len(PRECEDENCE_SLUGS) == 8
    for slug, case in table.items():
        assert case.faults, slug
        assert sorted(case.contexts) == sorted(CONTEXTS), slug
    with_unavailable = sorted(slug for slug, case in table.items() if case.unavailable)
    assert with_unavailable == sorted(set(PRECEDENCE_SLUGS) - {"abb-terra-ac"})


@pytest.mark.parametrize("slug", PRECEDENCE_SLUGS)
@pytest.mark.parametrize("context", CONTEXTS)
def test_each_situation_alone_is_not_a_fault(slug: str, context: str) -> None:
    """Positive control: without the error code, the same registers give the connector state."""
    case = precedence_table()[slug]
    status, _, problems = resolved(slug, case.healthy | case.contexts[context])
    assert (status, problems) == (case.context_status[context], [])


@pytest.mark.parametrize("slug", PRECEDENCE_SLUGS)
@pytest.mark.parametrize("context", CONTEXTS)
def test_an_error_is_faulted_whatever_the_cable_says(slug: str, context: str) -> None:
    """Error with no vehicle, with a vehicle, and while charging: faulted, with the documented IEC state."""
    case = precedence_table()[slug]
    for register, code, iec_state in case.faults:
        codes = case.healthy | case.contexts[context] | {register: code}
        assert resolved(slug, codes) == ("faulted", iec_state, []), (register, code, codes)


@pytest.mark.parametrize("slug", PRECEDENCE_SLUGS)
@pytest.mark.parametrize("context", CONTEXTS)
def test_unavailable_outranks_the_cable_state(slug: str, context: str) -> None:
    case = precedence_table()[slug]
    if not case.unavailable:
        assert slug == "abb-terra-ac"  # documented in docs/profiles.md: no unavailable state
        return
    for register, code in case.unavailable:
        codes = case.healthy | case.contexts[context] | {register: code}
        assert resolved(slug, codes)[0] == "unavailable", (register, code, codes)


@pytest.mark.parametrize("slug", PRECEDENCE_SLUGS)
def test_a_fault_outranks_unavailable(slug: str) -> None:
    case = precedence_table()[slug]
    pairs = [(f, u) for f in case.faults for u in case.unavailable if f[0] != u[0]]
    if slug in ("abb-terra-ac", "vestel-evc04"):  # no unavailable state, or only on the fault register
        assert pairs == []
        return
    assert pairs, slug
    for (fault_register, fault_code, iec_state), (register, code) in pairs:
        codes = case.healthy | case.contexts["no vehicle"] | {register: code, fault_register: fault_code}
        assert resolved(slug, codes) == ("faulted", iec_state, []), codes


@pytest.mark.parametrize("slug", PRECEDENCE_SLUGS)
def test_every_fault_and_unavailable_rule_is_a_documented_state(slug: str) -> None:
    """The profile says faulted or unavailable only where the table above (the vendor) does."""
    spec, case = shipped(slug), precedence_table()[slug]
    for rule in spec.status_rules:
        if rule.status not in ("faulted", "unavailable"):
            continue
        codes = [
            str(c) for r, c, *_ in (case.faults if rule.status == "faulted" else case.unavailable) if r == rule.register
        ]
        if rule.match == "is_not":
            assert any(code != rule.code for code in codes), rule
        elif not (slug == "schneider-evlink-pro-ac" and rule.register == "ev_state" and rule.code == "0"):
            assert rule.code in codes, rule  # Schneider ev_state 0 ("0V") is unavailable as evcc's A, see notes


# --- write ranges: every writable register, from its vendor (docs/profiles.md "Write ranges") ----

# (write_min, write_max, write_values) in engineering units, from the vendor documents; where they
# give none, IEC 61851-1: 6 A to the 32 A rating, and 0 where the vendor or evcc pauses with 0 A.
PAUSE_OR_IEC = (6, 32, (0,))
VENDOR_WRITE_RANGES: dict[str, dict[str, tuple[float | None, float | None, tuple[float, ...]]]] = {
    "alfen-eve": {
        "max_current_setpoint": PAUSE_OR_IEC,  # evcc writes 0.0 to disable; no range in the vendor doc
        "charge_phases": (None, None, (1, 3)),  # vendor enum
        "scn_max_current_l1": (6, 32, ()),
        "scn_max_current_l2": (6, 32, ()),
        "scn_max_current_l3": (6, 32, ()),
    },
    "abb-terra-ac": {
        "set_charging_current_limit": PAUSE_OR_IEC,  # ABB: < 6 A pauses; evcc writes 0
        "lock_unlock_socket_cable": (None, None, (0, 1)),
        "start_stop_session": (None, None, (0, 1)),
        "set_communication_timeout": (10, 65535, ()),  # ABB doc: range 10-65535
        "set_fallback_limit": (6, 32, (0, 255)),  # default 0xFF
    },
    "keba-p30": {
        "set_charging_current": (6, 63, ()),  # guide p16: 6000-63000 mA; a P30 pauses with 5014, not 0 A
        "set_energy": (0, 655350, ()),
        "unlock_plug": (None, None, (0,)),
        "enable_charging_station": (None, None, (0, 1)),
        "set_failsafe_current": (6, 63, (0,)),  # UDP guide V2.01 failsafe: 0; 6000-63000 mA
        "set_failsafe_timeout": (10, 600, (0,)),  # UDP guide V2.01 failsafe: 0; 10-600 s
        "set_failsafe_persist": (None, None, (0, 1)),
        "set_phase_switch_source": (None, None, (3,)),
        "trigger_phase_switch": (None, None, (0, 1)),
    },
    "webasto-next": {
        "set_charge_current": PAUSE_OR_IEC,  # evcc: min 6, 0 disables
        "safe_current": (6, 32, ()),
        "com_timeout": (1, 65535, ()),
        "set_charge_power": (0, 22000, ()),
        "start_cancel_session": (None, None, (0, 1, 2)),
        "life_bit": (None, None, (1,)),
    },
    "vestel-evc04": {
        "charging_current": PAUSE_OR_IEC,  # evcc: min 6, 0 disables
        "phase_switch": (None, None, (0, 1)),
        "failsafe_current": (6, 32, ()),
        "failsafe_timeout": (1, 65535, ()),
        "alive_register": (None, None, (1,)),
    },
    "schneider-evlink-pro-ac": {
        "set_point": PAUSE_OR_IEC,  # evcc: 0 disables
        "lifebit": (None, None, (1,)),
        "set_command": (None, None, (3, 7, 8, 9, 40, 41)),
        "degraded_set_point_mono": (6, 32, ()),
        "degraded_set_point_tri": (6, 32, ()),
    },
    "mennekes-amtron-hcc3": {
        "customer_current_limitation": PAUSE_OR_IEC,  # evcc: min 6, 0 disables
        "change_charge_state": (None, None, (1, 2, 3, 4)),
    },
    "generic-ev-charger": {"max_current": PAUSE_OR_IEC},
}


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_every_writable_register_has_its_vendor_range(path: Path) -> None:
    spec = read_spec_file(path)
    writable = {reg.name: (reg.write_min, reg.write_max, reg.write_values) for reg in spec.registers if reg.writable}
    assert writable == VENDOR_WRITE_RANGES[spec.slug]
    if spec.slug in REFERENCE_SLUGS:  # the reference's writable registers, every one
        ref_writable = {reg["name"] for reg in reference_chargers()[spec.slug]["registers"] if reg["access"] == "rw"}
        # Alfen's SCN L2/L3 limits are given beside L1 in the vendor table, not as reference rows.
        extra = {"scn_max_current_l2", "scn_max_current_l3"} if spec.slug == "alfen-eve" else set()
        assert set(writable) == ref_writable | extra
    for reg in spec.registers:
        if reg.writable:
            assert "Writes:" in reg.description, reg.name  # the range is cited where it comes from
            for value in (reg.write_min, reg.write_max, *reg.write_values):
                if value is not None:
                    encode_for_write(reg, value)  # raises if the value does not fit the register


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_current_setpoints_pause_with_zero_where_the_vendor_says_so(path: Path) -> None:
    """All but KEBA P30 disable by writing 0 A (reference); KEBA P30 uses 5014."""
    spec = read_spec_file(path)
    target = spec.register(spec.command(CommandAction.SET_CURRENT_LIMIT).register)
    assert target.writable
    pause = spec.command(CommandAction.PAUSE)
    if spec.slug == "keba-p30":
        with pytest.raises(WriteRangeError):
            check_write_range(target, 0)
        check_write_range(spec.register("enable_charging_station"), 0)
        assert (pause.register, pause.value) == ("enable_charging_station", 0)
    else:
        check_write_range(target, 0)
        assert (pause.register, pause.value) == (target.name, 0)
    check_write_range(target, 6)
    for refused in (3, 5.9, math.nan, target.write_max + 0.5):
        with pytest.raises(WriteRangeError):
            check_write_range(target, refused)


@pytest.mark.parametrize("slug", PRECEDENCE_SLUGS)
async def test_a_charger_in_error_without_a_car_is_polled_as_faulted(slug: str) -> None:
    """End to end: the simulated charger serves the vendor's error and 'no vehicle' codes, the poller reads them."""
    spec, case = shipped(slug), precedence_table()[slug]
    register, code, iec_state = case.faults[0]
    served = case.healthy | case.contexts["no vehicle"] | {register: code}
    records: list[dict] = []
    async with SimulatorFleet(spec, 1, base_port=0, seed=6) as fleet:
        sim = fleet.charge_points[0]
        for name, value in served.items():
            sim.set_value(name, value)
        config = ChargePointConfig(slug, "site", "127.0.0.1", sim.port, sim.unit_id, 1000, spec)
        poller = ChargePointPoller(config, records.append)
        try:
            record = await poller.poll_once()
        finally:
            await poller.connection.close()
    assert records == [record]
    assert (record["status"], record["iec61851_state"], record["error"]) == ("faulted", iec_state, None), served


@pytest.mark.django_db
@pytest.mark.parametrize("path", SHIPPED_FILES, ids=FILE_IDS)
def test_the_migrations_load_the_shipped_rules_and_ranges(path: Path) -> None:
    """What the poller loads from the database is the file: rule order, 'is_not' rules and write values."""
    spec = read_spec_file(path)
    stored = load_spec(DeviceProfile.objects.get(slug=spec.slug))
    assert stored.status_rules == spec.status_rules
    assert stored.registers == spec.registers
    assert any(rule.match == StatusMatch.IS_NOT for rule in stored.status_rules) == (
        spec.slug not in ("alfen-eve", "vestel-evc04", "schneider-evlink-pro-ac")
    )


def test_rule_matches_and_write_values_are_checked() -> None:
    spec = shipped("generic-ev-charger")
    unknown_match = RuleSpec("error_code", "0", "F", "faulted", match="isnt")
    assert profile_problems(dataclasses.replace(spec, status_rules=(*spec.status_rules, unknown_match))) == [
        "status rule error_code=0: match must be one of is, is_not, not 'isnt'"
    ]
    twice = spec.status_rules[1]
    assert twice.match == StatusMatch.IS_NOT
    assert profile_problems(dataclasses.replace(spec, status_rules=(*spec.status_rules, twice))) == [
        "status code error_code!=0 is mapped 2 times"
    ]
    read_only = dataclasses.replace(spec.register("power"), write_values=(0,))
    registers = tuple(read_only if reg.name == "power" else reg for reg in spec.registers)
    assert profile_problems(dataclasses.replace(spec, registers=registers)) == [
        "register 'power': A read-only register cannot have write values."
    ]
    # Not read, or 'not available': no rule of either kind matches, so the record says so.
    assert rule_matches(twice, {"error_code": None}) is False
    assert rule_matches(twice, {}) is False
    assert rule_matches(twice, {"error_code": 3}) is True
