"""Operator commands as profile data: what each shipped charger declares, checked against the
published register maps and the golden write tables (both from outside our code), and what the
validation refuses, through files, the admin form and the database.
"""

import importlib
import json
import re
from collections.abc import Callable
from functools import cache
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command

from gateway.choices import CommandAction, Function
from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.encode import encode_checked_write
from gateway.profiles.spec import CommandSpec, ProfileFormatError, ProfileSpec
from gateway.profiles.store import (
    export_profile_json,
    load_spec,
    parse_profile_json,
    read_spec_file,
    save_spec,
    shipped_profile_files,
)
from tests.golden import GoldenTable, Write, all_tables
from tests.test_profile_admin import error_page, post_profile

# A verbatim copy of shared/reference (tests/reference/README.md): ground truth from outside our code.
REFERENCE_PATH = Path(settings.BASE_DIR) / "tests" / "reference" / "charger_register_maps.json"
SHIPPED = {path.stem: path for path in shipped_profile_files()}
GOLDEN = {table.slug: table for table in all_tables()}
MAX_SHIPPED_SETTLE_S = 5.0  # tests and the benchmark wait for it; every shipped figure is at most this


@cache
def shipped(slug: str) -> ProfileSpec:
    return read_spec_file(SHIPPED[slug])


@cache
def reference_registers(slug: str) -> dict[str, dict[str, Any]]:
    """The published map of one charger, by register name."""
    chargers = {charger["slug"]: charger for charger in json.loads(REFERENCE_PATH.read_text())["chargers"]}
    return {register["name"]: register for register in chargers[slug]["registers"]}


def source_ids(spec: ProfileSpec) -> set[str]:
    """The ids a profile's `source` field defines, one per line: `id: reference (note)`."""
    return set(re.findall(r"^([a-z0-9_]+): ", spec.source, re.M))


def supported_commands() -> list[tuple[str, CommandSpec]]:
    return [(slug, command) for slug in sorted(GOLDEN) for command in shipped(slug).commands if command.supported]


def golden_row(table: GoldenTable, action: str) -> Write:
    return next(row for row in table.writes if row.action == action)


# --- what every shipped profile declares ----------------------------------------------------


# The chargers whose published maps declare a failsafe current (and timeout): issue 12.
FAILSAFE_CHARGERS = ("abb-terra-ac", "keba-p30", "schneider-evlink-pro-ac", "vestel-evc04", "webasto-next")
FAILSAFE_ACTIONS = [CommandAction.SET_FAILSAFE_CURRENT, CommandAction.SET_FAILSAFE_TIMEOUT]


@pytest.mark.parametrize("slug", sorted(SHIPPED))
def test_every_shipped_profile_declares_the_three_actions(slug: str) -> None:
    spec = shipped(slug)
    assert [command.action for command in spec.commands] == [
        CommandAction.SET_CURRENT_LIMIT,
        CommandAction.PAUSE,
        CommandAction.RESUME,
        *(FAILSAFE_ACTIONS if slug in FAILSAFE_CHARGERS else []),
    ]
    ids = source_ids(spec) or {"evdash"}  # the generic map cites itself
    for command in spec.commands:
        assert command.supported != bool(command.unsupported), command.action
        cited = set(re.findall(r"[a-z0-9_]+", command.source)) & ids
        assert cited, f"{command.action}: cites none of the profile's sources {sorted(ids)}"
        assert command.description, command.action
        assert 0 < command.settle_s <= MAX_SHIPPED_SETTLE_S, command.action
    limit = spec.command(CommandAction.SET_CURRENT_LIMIT)
    assert limit.supported and 6 <= limit.min_value < limit.max_value <= 32  # IEC 61851-1 minimum, 32 A rating


@pytest.mark.parametrize(("slug", "command"), supported_commands(), ids=lambda value: getattr(value, "action", value))
def test_command_registers_are_where_the_published_map_puts_them(slug: str, command: CommandSpec) -> None:
    """The register written is writable in the reference, and the one read back readable there."""
    spec, reference = shipped(slug), reference_registers(slug)
    target, published = spec.register(command.register), reference.get(command.register)
    assert published is not None, f"{command.register} is not in the published map of {slug}"
    assert (target.address, target.function) == (published["address"], Function(published["function"]))
    assert published["access"] == "rw", f"{command.register} is not writable in the published map"
    assert target.readable != published.get("write_only", False)
    verify_name = command.verify_register or command.register
    verify, published_verify = spec.register(verify_name), reference[verify_name]
    assert (verify.address, verify.function) == (published_verify["address"], Function(published_verify["function"]))
    assert not published_verify.get("write_only", False), f"{verify_name} cannot be read back (write-only)"
    # Codes written or expected must be codes the published map names for that register.
    if command.value is not None and "enum" in published:
        assert f"{command.value:g}" in published["enum"], (command.value, published["enum"])
    expected = command.verify_values or (() if command.verify_value is None else (command.verify_value,))
    if expected and "enum" in published_verify:
        assert {f"{value:g}" for value in expected} <= set(published_verify["enum"]), published_verify["enum"]


# Issue 12 / the published maps: (written, read back) addresses of the failsafe current and timeout.
# ABB's 4109h/4106h are write-only, read back at 4024h/4020h; KEBA's 5016/5018 at 1600/1602;
# Schneider's degraded set point 4006 (AI summary only) has no timeout register.
FAILSAFE_REGISTERS = {
    "keba-p30": ((5016, 1600), (5018, 1602)),
    "webasto-next": ((2000, 2000), (2002, 2002)),
    "vestel-evc04": ((2000, 2000), (2002, 2002)),
    "abb-terra-ac": ((0x4109, 0x4024), (0x4106, 0x4020)),
    "schneider-evlink-pro-ac": ((4006, 4006), None),
}


@pytest.mark.parametrize("slug", FAILSAFE_CHARGERS)
def test_failsafe_commands_write_the_registers_of_the_published_maps(slug: str) -> None:
    spec = shipped(slug)
    for action, expected in zip(FAILSAFE_ACTIONS, FAILSAFE_REGISTERS[slug], strict=True):
        command = spec.command(action)
        if expected is None:
            assert not command.supported and command.unsupported, action
            continue
        written, verified = spec.register(command.register), spec.register(command.verify_register or command.register)
        assert (written.address, verified.address) == expected, action
        assert verified.readable and written.writable, action
        unit = "A" if action == CommandAction.SET_FAILSAFE_CURRENT else "s"
        assert written.unit == verified.unit == unit, action
        # Both ends are writes the register takes; the charger applies whole A (>= 6 A or 0).
        for end in (command.min_value, command.max_value):
            encode_checked_write(written, end)
        if action == CommandAction.SET_FAILSAFE_CURRENT:
            assert command.min_value in (0, 6) and command.max_value == 32, (command.min_value, command.max_value)
        else:
            assert command.min_value >= 10, "shorter than two heartbeats (or ABB's documented 10 s minimum)"
    # ABB's documented timeout range (abb_doc: 10-65535 s).
    if slug == "abb-terra-ac":
        timeout = spec.command(CommandAction.SET_FAILSAFE_TIMEOUT)
        assert (timeout.min_value, timeout.max_value) == (10, 65535)


def test_keba_and_webasto_verify_through_their_status_registers() -> None:
    """Where the write register is write-only and nothing reads the setpoint back, a status register does."""
    keba, webasto = shipped("keba-p30"), shipped("webasto-next")
    enum = reference_registers("keba-p30")["charging_state"]["enum"]
    pause, resume = keba.command(CommandAction.PAUSE), keba.command(CommandAction.RESUME)
    assert pause.verify_register == resume.verify_register == "charging_state"
    assert {enum[f"{code:g}"] for code in pause.verify_values} == {enum["1"], enum["5"]}  # evcc: disabled
    assert 3 in resume.verify_values and not set(resume.verify_values) & set(pause.verify_values)
    assert webasto.command(CommandAction.PAUSE).verify_register == "charge_state"
    assert 7 not in webasto.command(CommandAction.SET_CURRENT_LIMIT).verify_values  # 7: charging error


# --- the golden write tables: the words a real charger must receive --------------------------


@pytest.mark.parametrize("slug", sorted(GOLDEN))
def test_limit_and_pause_put_the_golden_words_on_the_wire(slug: str) -> None:
    spec, table = shipped(slug), GOLDEN[slug]
    limit, pause = spec.command(CommandAction.SET_CURRENT_LIMIT), spec.command(CommandAction.PAUSE)
    for command, row, value in (
        (limit, golden_row(table, "limit 10 A"), 10),
        (pause, golden_row(table, "pause"), None),
    ):
        register = spec.register(command.register)
        assert (command.register, register.address, register.unit_id) == (row.register, row.address, row.unit_id)
        written = value if command.value is None else command.value
        assert written == row.value, f"{command.action}: writes {written}, {row.source} writes {row.value}"
        assert encode_checked_write(register, written) == list(row.words), row.source


@pytest.mark.parametrize("slug", sorted(GOLDEN))
def test_resume_undoes_the_golden_pause(slug: str) -> None:
    """A resume writes where the pause wrote: the held limit's words, or the vendor's enable code."""
    spec, table = shipped(slug), GOLDEN[slug]
    pause, resume = spec.command(CommandAction.PAUSE), spec.command(CommandAction.RESUME)
    assert resume.register == pause.register
    register = spec.register(resume.register)
    if resume.value is None:  # the held limit, as the golden "limit 10 A" writes it
        assert encode_checked_write(register, 10) == list(golden_row(table, "limit 10 A").words)
    else:  # an enable code the published map names
        enum = reference_registers(slug)[resume.register]["enum"]
        assert "enable" in enum[f"{resume.value:g}"] and "disable" in enum[f"{pause.value:g}"]


# --- validation ------------------------------------------------------------------------------


def base() -> dict:
    """A small valid profile with all three commands; each bad case changes one thing in it."""
    return {
        "slug": "commands",
        "name": "Commands",
        "registers": [
            {"name": "state", "address": 0, "enum": {"0": "idle", "1": "charging"}},
            {
                "name": "limit",
                "address": 1,
                "unit": "A",
                "access": "rw",
                "write_min": 6,
                "write_max": 32,
                "write_values": [0],
            },
            {"name": "set_limit", "address": 2, "unit": "A", "access": "w", "write_min": 6, "write_max": 32},
            {"name": "enable", "address": 3, "access": "w", "write_values": [0, 1]},
            {"name": "power_limit", "address": 4, "unit": "W", "access": "rw", "write_min": 0, "write_max": 22000},
        ],
        "status_rules": [{"register": "state", "code": "0", "iec61851_state": "A", "status": "available"}],
        "commands": [
            {"action": "set_current_limit", "register": "limit", "min_value": 6, "max_value": 32, "tolerance": 0.5},
            {"action": "pause", "register": "enable", "value": 0, "verify_register": "state", "verify_value": 0},
            {"action": "resume", "register": "limit", "settle_s": 2},
        ],
    }


def changed(change: Callable[[dict], object]) -> dict:
    data = base()
    change(data)
    return data


def command(index: int, **fields: object) -> Callable[[dict], object]:
    """Change fields of one command (None removes the field)."""

    def apply(data: dict) -> None:
        data["commands"][index].update(fields)
        for name in [name for name, value in fields.items() if value is None]:
            del data["commands"][index][name]

    return apply


def append(entry: dict) -> Callable[[dict], object]:
    return lambda data: data["commands"].append(entry)


BAD_COMMANDS = [
    ("unknown-action", command(1, action="stop"), "command 'stop': the action must be one of set_current_limit"),
    ("twice", append({"action": "pause", "register": "limit", "value": 0}), "command 'pause' is declared 2 times"),
    (
        "register-and-unsupported",
        command(1, unsupported="no pause"),
        "command 'pause': give either the register it writes or why it is unsupported, not both",
    ),
    (
        "neither",
        command(1, register=None, value=None, verify_register=None, verify_value=None),
        "command 'pause': needs the register it writes, or 'unsupported' saying why there is none",
    ),
    (
        "unsupported-with-details",
        command(1, register=None, unsupported="no pause"),
        "command 'pause': an unsupported command has no value, verify_register, verify_value",
    ),
    ("unknown-register", command(1, register="nope"), "command 'pause': register 'nope' is not a register of"),
    ("read-only-register", command(1, register="state"), "command 'pause': register 'state' is read-only"),
    (
        "unknown-verify",
        command(1, verify_register="gone"),
        "command 'pause': verify_register 'gone' is not a register of this profile",
    ),
    (
        "write-only-verify",
        command(1, verify_register="set_limit"),
        "command 'pause': register 'set_limit' is write-only, so it cannot be read back",
    ),
    (
        "write-only-without-verify",
        command(0, register="set_limit"),
        "command 'set_current_limit': register 'set_limit' is write-only, so it cannot be read back",
    ),
    (
        "range-above-register",
        command(0, max_value=40),
        "command 'set_current_limit': max_value 40 cannot be written: 40 is above the maximum 32",
    ),
    (
        "range-through-a-gap",
        command(0, min_value=0),
        "command 'set_current_limit': the range 0..32 A is not inside what 'limit' takes (0 or 6..32 A)",
    ),
    ("min-above-max", command(0, min_value=20, max_value=10), "command 'set_current_limit': min_value 20 is above"),
    ("no-range", command(0, max_value=None), "command 'set_current_limit': needs min_value and max_value"),
    ("limit-with-value", command(0, value=10), "command 'set_current_limit': value must be null"),
    (
        "limit-in-watts",
        command(0, register="power_limit", min_value=0, max_value=32),
        "command 'set_current_limit': register 'power_limit' holds W, not A",
    ),
    (
        "value-out-of-range",
        command(1, value=3),
        "command 'pause': value 3 cannot be written: 3 is not a value enable takes (allowed: 0 or 1)",
    ),
    ("settle-above-60", command(2, settle_s=61), "command 'resume': settle_s must be between 0 and 60 s, not 61"),
    ("settle-negative", command(2, settle_s=-1), "command 'resume': settle_s must be between 0 and 60 s, not -1"),
    ("tolerance-negative", command(0, tolerance=-0.1), "command 'set_current_limit': tolerance must be 0 or more"),
    (
        "verify-value-and-values",
        command(1, verify_values=[0, 1]),
        "command 'pause': give verify_value or verify_values, not both",
    ),
    ("pause-without-value", command(1, value=None), "command 'pause': needs the value to write"),
    (
        "pause-with-range",
        command(1, min_value=6),
        "command 'pause': only the actions that carry a value (set_current_limit, set_failsafe_current, "
        "set_failsafe_timeout) have a range",
    ),
    (
        "resume-held-without-limit",
        lambda data: data["commands"].pop(0),
        "command 'resume': value null writes the held limit, so the profile needs a supported set_current_limit",
    ),
    (
        "resume-held-elsewhere",
        command(2, register="power_limit"),
        "so it must write the set_current_limit register 'limit', not 'power_limit'",
    ),
    (
        "units-differ",
        command(2, value=6, verify_register="power_limit"),
        "command 'resume': the read-back of 'power_limit' (W) is compared with the value written to 'limit' (A)",
    ),
    ("wrong-type", command(2, settle_s="2"), "commands[2] field 'settle_s' must be a number, got '2'"),
    ("unknown-key", command(2, wait_s=2), "unknown field(s) 'wait_s' in commands[2]"),
    ("not-a-list", lambda data: data.update(commands={"pause": {}}), "'commands' must be a JSON list"),
]


def test_the_base_document_and_an_unsupported_command_pass() -> None:
    assert parse_profile_json(json.dumps(base())).command(CommandAction.PAUSE).verify_value == 0
    unsupported = changed(command(1, register=None, value=None, verify_register=None, verify_value=None))
    unsupported["commands"][1]["unsupported"] = "the vendor documents no pause"
    spec = parse_profile_json(json.dumps(unsupported))
    assert not spec.command(CommandAction.PAUSE).supported


@pytest.mark.parametrize(
    ("change", "message"), [case[1:] for case in BAD_COMMANDS], ids=[case[0] for case in BAD_COMMANDS]
)
def test_a_bad_command_is_refused_with_its_reason(change: Callable[[dict], object], message: str) -> None:
    with pytest.raises(ProfileFormatError) as refused:
        parse_profile_json(json.dumps(changed(change)), origin="bad.json")
    assert message in str(refused.value)


# --- the admin form --------------------------------------------------------------------------

FORM_REGISTERS = [
    {"name": "state", "address": 0},
    {"name": "limit", "address": 1, "unit": "A", "access": "rw", "write_min": 6, "write_max": 32,
     "write_values": "[0]"},
    {"name": "set_limit", "address": 2, "unit": "A", "access": "w", "write_min": 6, "write_max": 32},
]  # fmt: skip
FORM_COMMANDS = [
    {"action": "set_current_limit", "register": "limit", "min_value": 6, "max_value": 32},
    {"action": "pause", "register": "limit", "value": 0},
    {"action": "resume", "register": "limit"},
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("commands", "registers", "message"),
    [
        (
            [{**FORM_COMMANDS[0], "register": "set_limit"}],
            FORM_REGISTERS,
            "command 'set_current_limit': register 'set_limit' is write-only, so it cannot be read back",
        ),
        ([{**FORM_COMMANDS[0], "max_value": 40}], FORM_REGISTERS, "max_value 40 cannot be written"),
        (FORM_COMMANDS, FORM_REGISTERS[:1], "command 'set_current_limit': register 'limit' is not a register"),
        ([FORM_COMMANDS[1], FORM_COMMANDS[1]], FORM_REGISTERS, "command 'pause' is declared 2 times"),
        ([{**FORM_COMMANDS[1], "wait_s": 1}], FORM_REGISTERS, "unknown field(s) 'wait_s' in commands[0]"),
        ([{**FORM_COMMANDS[1], "settle_s": 90}], FORM_REGISTERS, "settle_s must be between 0 and 60 s, not 90"),
    ],
    ids=["write-only", "range", "register-not-posted", "twice", "unknown-key", "settle"],
)
def test_profile_form_refuses_a_bad_command(admin_client, commands: list, registers: list, message: str) -> None:
    profile = DeviceProfile.objects.create(slug="custom", name="Custom charger")
    page = error_page(post_profile(admin_client, profile, registers, commands=json.dumps(commands)))
    assert message in page
    profile.refresh_from_db()
    assert profile.commands == []
    assert not profile.registers.exists()


@pytest.mark.django_db
def test_profile_form_saves_commands_on_posted_registers(admin_client) -> None:
    profile = DeviceProfile.objects.create(slug="custom", name="Custom charger")
    response = post_profile(admin_client, profile, FORM_REGISTERS, commands=json.dumps(FORM_COMMANDS))
    assert response.status_code == 302
    spec = load_spec(DeviceProfile.objects.get(pk=profile.pk))
    assert [(c.action, c.register, c.value) for c in spec.commands] == [
        ("set_current_limit", "limit", None),
        ("pause", "limit", 0),
        ("resume", "limit", None),
    ]
    page = admin_client.get(f"/admin/gateway/deviceprofile/{profile.pk}/change/").content.decode()
    assert 'name="commands"' in page and "set_current_limit" in page


# --- storage: database, export, import, the migration ------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("slug", sorted(SHIPPED))
def test_commands_survive_the_database_and_export_import(slug: str, tmp_path: Path) -> None:
    spec = shipped(slug)
    stored = save_spec(spec, DeviceProfile, Register, StatusRule)
    assert load_spec(DeviceProfile.objects.get(pk=stored.pk)).commands == spec.commands
    out = StringIO()
    call_command("profiles", "export", slug, stdout=out)
    assert parse_profile_json(out.getvalue()).commands == spec.commands
    assert json.loads(export_profile_json(spec))["commands"][0]["action"] == "set_current_limit"
    DeviceProfile.objects.filter(slug=slug).delete()
    exported = tmp_path / f"{slug}.json"
    exported.write_text(out.getvalue())
    call_command("profiles", "import", str(exported), stdout=StringIO())
    assert load_spec(DeviceProfile.objects.get(slug=slug)).commands == spec.commands


@pytest.mark.django_db
def test_the_migration_stores_the_shipped_commands_and_drops_the_old_role() -> None:
    """0007 on profiles stored before it: commands written where the registers fit, role set_current_a cleared."""
    migration = importlib.import_module("gateway.migrations.0007_profile_commands")
    alfen = save_spec(shipped("alfen-eve"), DeviceProfile, Register, StatusRule)
    keba = save_spec(shipped("keba-p30"), DeviceProfile, Register, StatusRule)
    DeviceProfile.objects.filter(pk__in=[alfen.pk, keba.pk]).update(commands=[])
    # As stored before: the setpoint carried role set_current_a; an operator renamed a KEBA register.
    Register.objects.filter(profile=alfen, name="max_current_setpoint").update(role="set_current_a")
    Register.objects.filter(profile=keba, name="enable_charging_station").update(name="enable")
    migration.forwards(apps, None)
    assert load_spec(DeviceProfile.objects.get(pk=alfen.pk)).commands == shipped("alfen-eve").commands
    assert not Register.objects.filter(role="set_current_a").exists()
    assert DeviceProfile.objects.get(pk=keba.pk).commands == []  # would name a register it no longer has


@pytest.mark.django_db
def test_migration_0016_gives_stored_profiles_the_failsafe_commands() -> None:
    """A database migrated before issue 12 holds the three operator commands only; 0016 adds the failsafe ones."""
    migration = importlib.import_module("gateway.migrations.0016_failsafe_commands")
    stored = {slug: save_spec(shipped(slug), DeviceProfile, Register, StatusRule) for slug in FAILSAFE_CHARGERS}
    for slug, profile in stored.items():
        DeviceProfile.objects.filter(pk=profile.pk).update(commands=shipped(slug).to_dict()["commands"][:3])
    # An operator renamed ABB's fallback register: its commands no longer fit and are left alone.
    Register.objects.filter(profile=stored["abb-terra-ac"], name="set_fallback_limit").update(name="fallback")
    migration.forwards(apps, None)
    for slug in FAILSAFE_CHARGERS:
        actions = [command.action for command in load_spec(DeviceProfile.objects.get(slug=slug)).commands]
        if slug == "abb-terra-ac":
            assert actions == [CommandAction.SET_CURRENT_LIMIT, CommandAction.PAUSE, CommandAction.RESUME]
        else:
            assert actions[3:] == FAILSAFE_ACTIONS, slug
    assert "webasto_ha_numbers: " in DeviceProfile.objects.get(slug="webasto-next").source
