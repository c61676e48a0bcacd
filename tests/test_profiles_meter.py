"""The shipped site meter profile (Eastron SDM630) and the rule that tells meters from chargers.

Ground truth from outside our code: the Eastron "SDM630 Modbus Protocol" input register table
(30001 = phase 1 voltage, 30007 = phase 1 current, 30053 = total system power, 30071 = frequency,
30073 = total import kWh; each a 32-bit IEEE 754 float in two registers, high word first), as
volkszaehler/mbmd meters/rs485/sdm.go @ 9a41fc894f7e60e4c3d8b479e7ae7582ccbf94c6 reads it (FC04,
2 registers, big-endian float). The words below were worked out with struct.pack(">f") in a
scratch shell, never with gateway code.
"""

import importlib
from dataclasses import replace

import pytest

from gateway.modbus.connection import ChargePointConnection
from gateway.modbus.planner import plan_reads
from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.decode import decode_block
from gateway.profiles.store import (
    SITE_METER_PROFILE,
    charger_profiles,
    meter_profiles,
    read_spec_file,
    save_spec,
    shipped_meter_files,
    shipped_profile_files,
    shipped_spec,
)
from gateway.profiles.validate import is_meter_profile
from tests.conftest import free_port, within
from tests.golden.wire import WordServer

UNIT_ID = 1  # Eastron's default slave address
# Eastron's 1-based input register number -> (the words an SDM630 answers, what they mean, the role).
EASTRON_WORDS = {
    30001: ((0x4366, 0x199A), 230.1, "voltage_l1_v"),
    30003: ((0x4365, 0x8000), 229.5, "voltage_l2_v"),
    30005: ((0x4367, 0x0000), 231.0, "voltage_l3_v"),
    30007: ((0x4148, 0x0000), 12.5, "current_l1_a"),
    30009: ((0x40E8, 0x0000), 7.25, "current_l2_a"),
    30011: ((0x0000, 0x0000), 0.0, "current_l3_a"),
    30053: ((0x458D, 0xE000), 4540.0, "power_w"),
    30073: ((0x449A, 0x5000), 1234.5 * 1000, "energy_total_wh"),  # 1234.5 kWh
}


def meter_spec():
    return shipped_spec(SITE_METER_PROFILE)


def test_the_sdm630_maps_eastrons_input_registers_to_the_roles_the_controller_reads() -> None:
    spec = meter_spec()
    for number, (_words, _value, role) in EASTRON_WORDS.items():
        register = spec.register_for(role)
        assert register is not None, role
        assert (register.address, register.function, register.data_type) == (number - 30001, "input", "float32")
        assert register.byte_order == "ABCD", role
    assert spec.default_unit_id == UNIT_ID


async def test_the_sdm630_decodes_a_meters_words_read_over_modbus_tcp() -> None:
    """The normal machinery (plan_reads, a real connection, decode_block) reads what a real SDM630 answers."""
    spec = meter_spec()
    words = {
        (UNIT_ID, "input", number - 30001 + offset): word
        for number, (pair, _value, _role) in EASTRON_WORDS.items()
        for offset, word in enumerate(pair)
    }
    server = WordServer(words)
    port = free_port()
    await server.start(port)
    connection = ChargePointConnection("127.0.0.1", port, UNIT_ID, 5.0)
    decoded: dict = {}
    try:
        await within(connection.ensure_connected())
        requests = plan_reads(spec, ("fast", "slow"))
        for request in requests:
            values, errors = decode_block(
                request.registers, request.address, list(await within(connection.read(request)))
            )
            assert errors == {}
            decoded |= values
    finally:
        await connection.close()
        await server.stop()
    assert {fc for _unit, fc, _address, _count in server.reads} == {4}  # input registers only
    assert len(requests) <= 3  # one read per contiguous run, at a 1 s meter period
    for _number, (_words, value, role) in EASTRON_WORDS.items():
        assert decoded[spec.register_for(role).name] == pytest.approx(value, rel=1e-6), role


def test_only_the_meter_is_a_meter_profile() -> None:
    assert [path.stem for path in shipped_meter_files()] == [SITE_METER_PROFILE]
    assert is_meter_profile(meter_spec())
    chargers = [shipped_spec(path.stem) for path in shipped_profile_files()]
    assert len(chargers) == 8 and not any(is_meter_profile(spec) for spec in chargers)
    # A charger stays a charger without its commands or heartbeats: it has a status.
    assert not any(is_meter_profile(replace(spec, commands=(), heartbeats=())) for spec in chargers)
    # A meter takes no commands, has no status and no watchdog, and writes nothing.
    spec = meter_spec()
    assert (spec.commands, spec.status_rules, spec.heartbeats) == ((), (), ())
    assert not any(register.writable for register in spec.registers)


@pytest.mark.django_db
def test_the_database_offers_the_meter_for_sites_only() -> None:
    """Migration 0017 stores it (run again here: a transactional test elsewhere may have flushed the
    data migrations' rows); the same rule as is_meter_profile, on the stored rows."""
    from django.apps import apps

    for path in shipped_profile_files():
        save_spec(read_spec_file(path), DeviceProfile, Register, StatusRule)
    importlib.import_module("gateway.migrations.0017_site_meter_profiles").load_meter_profiles(apps, None)
    stored = {profile.slug for profile in DeviceProfile.objects.all()}
    assert SITE_METER_PROFILE in stored
    assert {profile.slug for profile in meter_profiles()} == {SITE_METER_PROFILE}
    assert {profile.slug for profile in charger_profiles()} == stored - {SITE_METER_PROFILE}
    assert {path.stem for path in shipped_profile_files()} <= stored
