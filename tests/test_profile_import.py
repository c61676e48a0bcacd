"""Hostile profile files are refused with a clear message, through the admin and `profiles import` alike.

Each file of the table is one way a staff account (or a bad download) could hand the import
something that used to crash it with a 500 or store what the admin form refuses. Both import
paths must answer with the reason and store nothing.
"""

import html
import json
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.store import SHIPPED_DIR, load_spec, read_spec_file, shipped_profile_files
from tests.test_profile_admin import error_page, post_profile

pytestmark = pytest.mark.django_db

ONE_MIB = 1024 * 1024


def base() -> dict:
    """A small valid profile; each hostile case changes one thing in it."""
    return {
        "slug": "hostile",
        "name": "Hostile",
        "registers": [
            {"name": "state", "address": 0},
            {"name": "limit", "address": 1, "access": "rw", "write_min": 6, "write_max": 32},
        ],
        "status_rules": [{"register": "state", "code": "1", "iec61851_state": "A", "status": "available"}],
        "heartbeats": [{"register": "limit", "interval_s": 10, "value_from": "limit"}],
    }


def doc(change: Callable[[dict], object]) -> bytes:
    """The base document with one change applied, as JSON bytes."""
    data = base()
    change(data)
    return json.dumps(data).encode()


def text(change: Callable[[str], str]) -> bytes:
    """The base document's JSON text with one textual change (for what json.dumps cannot write)."""
    return change(json.dumps(base())).encode()


def register(**fields: object) -> Callable[[dict], object]:
    return lambda data: data["registers"][0].update(fields)


def profile(**fields: object) -> Callable[[dict], object]:
    return lambda data: data.update(fields)


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [
    # Parsing: size, encoding, nesting, numbers JSON parsers accept but a profile cannot hold.
    ("oversized", b" " * ONE_MIB + json.dumps(base()).encode(), "larger than the 1048576-byte limit for a profile"),
    ("blank", b"\n", "not valid JSON: Expecting value: line 2 column 1"),
    ("not-utf8", json.dumps(base()).replace("Hostile", "H\\u00e9").encode().replace(b"\\u00e9", b"\xe9"), "not UTF-8"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "nested too deeply to read"),
    ("nesting-in-simulator", doc(profile(simulator={"hint": nested(40)})), "nested deeper than 16 levels"),
    ("huge-int", text(lambda t: t.replace('"address": 0', '"address": 1' + "0" * 5000)), "a number has 5001 digits"),
    ("nan", text(lambda t: t.replace('"write_min": 6', '"write_min": NaN')), "NaN is not a number a profile"),
    ("infinity", text(lambda t: t.replace('"write_max": 32', '"write_max": -Infinity')), "-Infinity is not a number"),
    ("float-overflow", text(lambda t: t.replace('"write_max": 32', '"write_max": 1e999')), "1e999 is out of range"),
    ("nul-character", doc(profile(name="Hos\x00tile")), "'name': text must not contain NUL characters"),
    ("lone-surrogate", text(lambda t: t.replace("Hostile", "Hos\\ud800tile")), "text is not valid Unicode"),
    # Shape: wrong types everywhere, unknown keys, missing fields.
    ("top-level-list", b"[]", "a profile is a JSON object, got a JSON list"),
    ("missing-slug", doc(lambda d: d.pop("slug")), "missing field(s) slug in the profile"),
    ("unknown-top-level-key", doc(profile(sluggish=1)), "unknown field(s) 'sluggish' in the profile"),
    ("unknown-register-key", doc(register(adress=0)), "unknown field(s) 'adress' in registers[0] ('state')"),
    (
        "unknown-read-block-key",
        doc(profile(read_blocks=[{"function": "holding", "address": 0, "count": 2, "size": 2}])),
        "unknown field(s) 'size' in read_blocks[0]",
    ),
    (
        "unknown-heartbeat-key",
        doc(lambda d: d["heartbeats"][0].update(every=5)),
        "unknown field(s) 'every' in heartbeats[0]",
    ),
    (
        "registers-not-a-list",
        doc(profile(registers={"state": 0})),
        "'registers' must be a JSON list, got a JSON object",
    ),
    ("register-not-an-object", doc(profile(registers=[1])), "registers[0] must be a JSON object, got 1"),
    ("name-null", doc(profile(name=None)), "field 'name' must be text, got null"),
    ("port-as-text", doc(profile(default_port="502")), "field 'default_port' must be a whole number, got '502'"),
    ("address-as-text", doc(register(address="12")), "registers[0] ('state') field 'address' must be a whole number"),
    ("address-as-bool", doc(register(address=True)), "field 'address' must be a whole number, got true"),
    ("scale-as-bool", doc(register(scale=True)), "field 'scale' must be a number, got true"),
    ("enum-as-list", doc(register(enum=[1])), "field 'enum' must be a JSON object, got a JSON list"),
    ("enum-value-number", doc(register(enum={"1": 2})), "field 'enum'['1'] must be text, got 2"),
    (
        "status-code-as-list",
        doc(lambda d: d["status_rules"][0].update(code=[1])),
        "status_rules[0] field 'code' must be text, got a JSON list",
    ),
    ("heartbeats-as-text", doc(profile(heartbeats="limit")), "'heartbeats' must be a JSON list, got 'limit'"),
    (
        "read-block-address-as-text",
        doc(profile(read_blocks=[{"function": "holding", "address": "0", "count": 2}])),
        "read_blocks[0] field 'address' must be a whole number, got '0'",
    ),
    ("derived-as-text", doc(profile(derived="power_w")), "'derived' must be a JSON list of role names"),
    ("simulator-as-list", doc(profile(simulator=[])), "field 'simulator' must be a JSON object, got a JSON list"),
    # Values the admin form refuses (model field validation), now refused by the import too.
    ("slug-path", doc(profile(slug="../x")), "profile slug: Enter a valid “slug”"),
    ("slug-too-long", doc(profile(slug="x" * 51)), "profile slug: Ensure this value has at most 50 characters"),
    (
        "port-70000",
        doc(profile(default_port=70000)),
        "profile default_port: Ensure this value is less than or equal to 65535",
    ),
    (
        "unit-id-300",
        doc(profile(default_unit_id=300)),
        "profile default_unit_id: Ensure this value is less than or equal to 255",
    ),
    (
        "register-unit-id-300",
        doc(register(unit_id=300)),
        "register 'state' unit_id: Ensure this value is less than or equal to 255",
    ),
    (
        "zero-length-string",
        doc(lambda d: d["registers"].append({"name": "serial", "address": 10, "data_type": "string", "length": 0})),
        "register 'serial' length: Ensure this value is greater than or equal to 1",
    ),
    (
        "read-size-0",
        doc(profile(max_read_registers=0)),
        "profile max_read_registers: Ensure this value is greater than or equal to 1",
    ),
    (
        "fixed-read-size-0",
        doc(profile(fixed_read_size=0)),
        "profile fixed_read_size: Ensure this value is greater than or equal to 1",
    ),
    (
        "negative-address",
        doc(register(address=-1)),
        "register 'state' address: Ensure this value is greater than or equal to 0",
    ),
    (
        "negative-port",
        doc(profile(default_port=-1)),
        "profile default_port: Ensure this value is greater than or equal to 0",
    ),
    (
        "mask-beyond-64-bit-column",
        doc(register(mask=18446744073709551616)),
        "register 'state' mask: Ensure this value is less than or equal to 9223372036854775807",
    ),
    (
        "unknown-state",
        doc(lambda d: d["status_rules"][0].update(iec61851_state="X")),
        "iec61851_state: Value 'X' is not a valid choice",
    ),
    # Consistency: what would have hit a database constraint (IntegrityError) or broken the poller.
    (
        "duplicate-register-names",
        doc(lambda d: d["registers"].append({"name": "state", "address": 5})),
        "register name 'state' is used 2 times",
    ),
    (
        "duplicate-status-codes",
        doc(lambda d: d["status_rules"].append(dict(d["status_rules"][0]))),
        "status code state=1 is mapped 2 times",
    ),
    (
        "heartbeat-unknown-register",
        doc(lambda d: d["heartbeats"][0].update(register="nope")),
        "heartbeat register 'nope' is not a writable register of this profile",
    ),
    (
        "heartbeat-read-only-register",
        doc(lambda d: d["heartbeats"][0].update(register="state")),
        "heartbeat register 'state' is not a writable register of this profile",
    ),
    (
        "heartbeat-interval-huge",
        doc(lambda d: d["heartbeats"][0].update(interval_s=1e300)),
        "heartbeat 'limit': interval_s must be above 0 and at most 3600",
    ),
    ("derived-unknown-role", doc(profile(derived=["voltage_l1_v"])), "only power_w can be derived, not 'voltage_l1_v'"),
    (
        "read-block-count-0",
        doc(profile(read_blocks=[{"function": "holding", "address": 0, "count": 0}])),
        "read block holding 0+0: count must be between 1 and 125",
    ),
    (
        "read-block-address-70000",
        doc(profile(read_blocks=[{"function": "holding", "address": 70000, "count": 2}])),
        "read block holding 70000+2: address must be between 0 and 65535",
    ),
]


def stored() -> tuple[int, int, int]:
    return DeviceProfile.objects.count(), Register.objects.count(), StatusRule.objects.count()


def upload(client: Client, name: str, content: bytes) -> HttpResponse:
    file = SimpleUploadedFile(name, content, content_type="application/json")
    return client.post(reverse("admin:gateway_deviceprofile_import"), {"file": file})


@pytest.mark.parametrize(("content", "message"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_admin_import_refuses_hostile_file(admin_client, content: bytes, message: str) -> None:
    before = stored()
    page = error_page(upload(admin_client, "hostile.json", content))
    assert "hostile.json: " in page
    assert message in page
    assert stored() == before


@pytest.mark.parametrize(("content", "message"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_command_import_refuses_hostile_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_bytes(content)
    before = stored()
    with pytest.raises(CommandError) as error:
        call_command("profiles", "import", str(path))
    assert str(error.value).startswith("hostile.json: ")
    assert message in str(error.value)
    assert stored() == before


@pytest.mark.parametrize("path", ["admin", "command"])
def test_the_base_document_imports(admin_client, tmp_path: Path, path: str) -> None:
    """The positive control of the table: without its one change, each hostile file would import."""
    if path == "admin":
        assert upload(admin_client, "base.json", doc(lambda d: None)).status_code == 302
    else:
        (tmp_path / "base.json").write_bytes(doc(lambda d: None))
        call_command("profiles", "import", str(tmp_path / "base.json"), stdout=StringIO())
    spec = load_spec(DeviceProfile.objects.get(slug="hostile"))
    assert [r.name for r in spec.registers] == ["state", "limit"]
    assert spec.heartbeats[0].value_from == "limit"


def test_size_limit_is_the_setting(admin_client, settings) -> None:
    settings.EVDASH = settings.EVDASH | {"PROFILE_MAX_BYTES": 100}
    page = error_page(upload(admin_client, "base.json", doc(lambda d: None)))
    assert "base.json: larger than the 100-byte limit for a profile (PROFILE_MAX_BYTES)" in page


def test_a_refused_file_leaves_the_profile_it_would_replace_alone(admin_client, generic_profile, tmp_path) -> None:
    original = load_spec(generic_profile)
    bad = doc(lambda d: d.update(slug=original.slug, default_port=70000))
    error_page(upload(admin_client, "bad.json", bad))
    (tmp_path / "bad.json").write_bytes(bad)
    with pytest.raises(CommandError, match="default_port"):
        call_command("profiles", "import", str(tmp_path / "bad.json"))
    assert load_spec(DeviceProfile.objects.get(slug=original.slug)) == original


SHIPPED = shipped_profile_files()


def test_every_shipped_profile_is_in_the_list() -> None:
    assert {path.stem for path in SHIPPED} >= {
        "abb-terra-ac", "alfen-eve", "generic-ev-charger", "keba-p30", "mennekes-amtron-hcc3",
        "schneider-evlink-pro-ac", "vestel-evc04", "webasto-next",
    }  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_shipped_profile_passes_the_import_checks(admin_client, path: Path) -> None:
    """The shipped files pass the same checks as any import, through the admin's upload."""
    DeviceProfile.objects.filter(slug=path.stem).delete()
    response = upload(admin_client, path.name, path.read_bytes())
    assert response.status_code == 302, html.unescape(response.content.decode())
    assert load_spec(DeviceProfile.objects.get(slug=path.stem)) == read_spec_file(SHIPPED_DIR / path.name)


# The admin's profile form: what the poller cannot use is refused there too.
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"read_blocks": '[{"function": "holding", "address": 0, "count": 2, "size": 2}]'},
            "unknown field(s) 'size' in read_blocks[0]",
        ),
        (
            {"read_blocks": '[{"function": "holding", "address": "0", "count": 2}]'},
            "read_blocks[0] field 'address' must be a whole number, got '0'",
        ),
        (
            {"read_blocks": '[{"function": "holding", "address": 0, "count": 200}]'},
            "read block holding 0+200: count must be between 1 and 125",
        ),
        (
            {"read_blocks": '[{"function": "holding", "address": 0, "count": 2, "unit_id": 300}]'},
            "read block holding 0+2: unit_id must be between 0 and 255",
        ),
        ({"read_blocks": '{"function": "holding"}'}, "'read_blocks' must be a JSON list, got a JSON object"),
        (
            {"heartbeats": '[{"register": "nope", "interval_s": 5, "value": 1}]'},
            "heartbeat register 'nope' is not a writable register of this profile",
        ),
        (
            {"heartbeats": '[{"register": "state", "interval_s": 5, "value": 1}]'},
            "heartbeat register 'state' is not a writable register of this profile",
        ),
        (
            {"heartbeats": '[{"register": "limit", "interval_s": 5, "value_from": "gone"}]'},
            "heartbeat value_from 'gone' is not a register of this profile",
        ),
        (
            {"heartbeats": '[{"register": "limit", "interval_s": "5", "value": 1}]'},
            "heartbeats[0] field 'interval_s' must be a number, got '5'",
        ),
        (
            {"heartbeats": '[{"register": "limit", "interval_s": 5, "value": 1, "every": 2}]'},
            "unknown field(s) 'every' in heartbeats[0]",
        ),
        ({"derived": '"power_w"'}, "'derived' must be a JSON list of role names"),
        ({"derived": "[1]"}, "'derived' must be a JSON list of role names"),
        ({"derived": '["voltage_l1_v"]'}, "only power_w can be derived, not 'voltage_l1_v'"),
        ({"derived": '["power_w", "power_w"]'}, "a role is derived more than once"),
    ],
    ids=[
        "block-unknown-key",
        "block-address-text",
        "block-count-200",
        "block-unit-300",
        "blocks-not-list",
        "heartbeat-unknown-register",
        "heartbeat-read-only",
        "heartbeat-value-from-unknown",
        "heartbeat-interval-text",
        "heartbeat-unknown-key",
        "derived-text",
        "derived-number",
        "derived-unknown-role",
        "derived-twice",
    ],
)
def test_profile_form_refuses_what_the_poller_cannot_use(admin_client, fields: dict, message: str) -> None:
    profile = DeviceProfile.objects.create(slug="custom", name="Custom charger")
    registers = [{"name": "state", "address": 0}, {"name": "limit", "address": 1, "access": "rw"}]
    page = error_page(post_profile(admin_client, profile, registers, **fields))
    assert message in page
    profile.refresh_from_db()
    assert (profile.read_blocks, profile.heartbeats, profile.derived) == ([], [], [])
    assert not profile.registers.exists()


def test_profile_form_saves_a_heartbeat_on_a_posted_writable_register(admin_client) -> None:
    """The positive control: the same form with a heartbeat on the writable register saves."""
    profile = DeviceProfile.objects.create(slug="custom", name="Custom charger")
    registers = [{"name": "state", "address": 0}, {"name": "limit", "address": 1, "access": "rw"}]
    heartbeat = {"register": "limit", "interval_s": 5, "value_from": "limit"}
    response = post_profile(
        admin_client,
        profile,
        registers,
        heartbeats=json.dumps([heartbeat]),
        read_blocks='[{"function": "holding", "address": 0, "count": 2}]',
        derived='["power_w"]',
    )
    assert response.status_code == 302
    profile.refresh_from_db()
    assert profile.heartbeats == [heartbeat]
    assert profile.derived == ["power_w"]


@pytest.mark.parametrize(
    ("slug", "filename"),
    [
        ('x"\r\nSet-Cookie: a=b', "x_Set-Cookie_a_b.json"),
        ("../../etc/passwd", "etc_passwd.json"),
        ('"";', "profile.json"),
        ("my-charger_2", "my-charger_2.json"),
    ],
    ids=["crlf-and-quote", "path", "nothing-left", "plain"],
)
def test_export_filename_is_safe_whatever_the_slug(admin_client, slug: str, filename: str) -> None:
    # Written past validation, as rows stored before it existed could be.
    profile = DeviceProfile.objects.create(slug=slug, name="Stored before validation")
    response = admin_client.post(
        reverse("admin:gateway_deviceprofile_changelist"),
        {"action": "export_json", "_selected_action": [profile.pk]},
    )
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{filename}"'
    assert json.loads(response.content)["slug"] == slug
