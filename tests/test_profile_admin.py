"""Profiles as data: admin validation of the register table, JSON import/export round trips."""

import html
import json
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.http import HttpResponse
from django.urls import reverse

from gateway.models import DeviceProfile
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import SHIPPED_DIR, load_spec, read_spec_file, shipped_profile_files
from gateway.profiles.validate import profile_problems
from tests.conftest import shipped_profile

pytestmark = pytest.mark.django_db


def profile_form(profile: DeviceProfile, registers: list[dict], rules: list[dict], **fields: object) -> dict:
    """The admin change form of a profile as a browser posts it (`fields` override profile fields)."""
    data = {
        "slug": profile.slug, "name": profile.name, "vendor": "", "model": "", "source": "", "notes": "",
        "default_port": 502, "default_unit_id": 1, "max_gap": 8, "max_read_registers": 125,
        "fixed_read_size": "", "read_blocks": "[]", "derived": "[]", "heartbeats": "[]", "simulator": "{}",
        "request_gap_ms": 0, "write_gap_ms": 0, "pacing_source": "",
        "registers-TOTAL_FORMS": len(registers), "registers-INITIAL_FORMS": 0,
        "registers-MIN_NUM_FORMS": 0, "registers-MAX_NUM_FORMS": 1000,
        "status_rules-TOTAL_FORMS": len(rules), "status_rules-INITIAL_FORMS": 0,
        "status_rules-MIN_NUM_FORMS": 0, "status_rules-MAX_NUM_FORMS": 1000,
    } | fields  # fmt: skip
    register_defaults = {
        "function": "holding", "data_type": "uint16", "length": 1, "byte_order": "ABCD", "encoding": "ascii",
        "scale": 1, "offset": 0, "unit": "", "role": "", "access": "r", "poll_group": "fast", "write_values": "[]",
    }  # fmt: skip
    for index, register in enumerate(registers):
        for key, value in (register_defaults | register).items():
            data[f"registers-{index}-{key}"] = value
    for index, rule in enumerate(rules):
        for key, value in ({"position": index, "description": "", "match": "is"} | rule).items():
            data[f"status_rules-{index}-{key}"] = value
    return data


@pytest.fixture
def empty_profile(db: None) -> DeviceProfile:
    return DeviceProfile.objects.create(slug="custom", name="Custom charger")


def post_profile(
    admin_client, profile: DeviceProfile, registers: list[dict], rules: list[dict] | None = None, **fields: object
) -> HttpResponse:
    url = reverse("admin:gateway_deviceprofile_change", args=[profile.pk])
    return admin_client.post(url, profile_form(profile, registers, rules or [], **fields))


def error_page(response: HttpResponse) -> str:
    """The text of a form page that was shown again with errors (not saved, not a crash)."""
    assert response.status_code == 200, f"expected the form again with errors, got HTTP {response.status_code}"
    assert 'class="errorlist' in response.content.decode(), "the form page shows no error"
    return html.unescape(response.content.decode())


def test_a_valid_register_table_saves(admin_client, empty_profile) -> None:
    response = post_profile(
        admin_client,
        empty_profile,
        [{"name": "state", "address": 0}, {"name": "power", "address": 1, "data_type": "float32", "length": 2}],
        [{"register": "state", "code": "2", "iec61851_state": "C", "status": "charging"}],
    )
    assert response.status_code == 302
    spec = load_spec(empty_profile)
    assert [r.name for r in spec.registers] == ["state", "power"]
    assert spec.status_rules[0].code == "2"


@pytest.mark.parametrize(
    ("registers", "rules", "message"),
    [
        (
            [{"name": "a", "address": 10, "data_type": "uint32", "length": 2}, {"name": "b", "address": 11}],
            [],
            "Registers 'a' (10..11) and 'b' (11..11) overlap.",
        ),
        ([{"name": "a", "address": 65535, "data_type": "uint32", "length": 2}], [], "runs past 65535"),
        ([{"name": "a", "address": 0, "data_type": "float64", "length": 2}], [], "occupies 4 register(s)"),
        ([{"name": "a", "address": 0, "write_min": 0, "write_max": 5}], [], "read-only register cannot have a write"),
        ([{"name": "a", "address": 0, "role": "warp_factor"}], [], "warp_factor is not one of the available choices"),
        (
            [{"name": "a", "address": 0}],
            [
                {"register": "a", "code": "1", "iec61851_state": "B", "status": "preparing"},
                {"register": "a", "code": "1", "iec61851_state": "C", "status": "charging"},
            ],
            "Please correct the duplicate data for register, code and match",
        ),
        (
            [{"name": "a", "address": 0}],
            [{"register": "nope", "code": "1", "iec61851_state": "B", "status": "preparing"}],
            "Status rule nope=1 names no register of this profile.",
        ),
    ],
    ids=["overlap", "past-65535", "length", "write-range-read-only", "unknown-role", "code-twice", "rule-register"],
)
def test_register_table_errors_are_clear(admin_client, empty_profile, registers, rules, message) -> None:
    page = error_page(post_profile(admin_client, empty_profile, registers, rules))
    assert message in page
    assert not empty_profile.registers.exists()


# One test per file (test_profile_import checks the list holds every shipped profile).
@pytest.mark.parametrize("path", shipped_profile_files(), ids=lambda path: path.stem)
def test_import_export_round_trip_of_shipped_profile(tmp_path, path) -> None:
    original = read_spec_file(path)
    shipped_profile(original.slug)  # as the data migration stores it: a transactional test before may have flushed it
    out = StringIO()
    call_command("profiles", "export", original.slug, stdout=out)
    exported = tmp_path / f"{original.slug}.json"
    exported.write_text(out.getvalue())
    DeviceProfile.objects.filter(slug=original.slug).delete()
    report = StringIO()
    call_command("profiles", "import", str(exported), stdout=report)
    assert report.getvalue().startswith(f"Created profile {original.slug} ({len(original.registers)} registers, ")
    assert load_spec(DeviceProfile.objects.get(slug=original.slug)) == original


def test_import_of_malformed_json_is_a_clear_error(tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"slug": "x", "name": "X", "registers": [')
    with pytest.raises(CommandError, match=r"broken.json: not valid JSON: Expecting value: line 1 column 42"):
        call_command("profiles", "import", str(broken))


def test_import_of_inconsistent_profile_names_every_problem(tmp_path) -> None:
    data = {
        "slug": "bad",
        "name": "Bad",
        "registers": [
            {"name": "a", "address": 0, "data_type": "uint32", "length": 2},
            {"name": "b", "address": 1, "data_type": "float32"},
        ],
        "status_rules": [{"register": "c", "code": "1", "iec61851_state": "X", "status": "charging"}],
        "heartbeats": [{"register": "a", "interval_s": 5, "value": 1}],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CommandError) as error:
        call_command("profiles", "import", str(path))
    message = str(error.value)
    for expected in (
        "register 'b': Type float32 occupies 2 register(s), not 1",
        "registers 'a' (0..1) and 'b' (1..2) overlap",
        "status rule for unknown register 'c'",
        "unknown IEC 61851 state 'X'",
        "heartbeat register 'a' is not a writable register",
    ):
        assert expected in message
    assert not DeviceProfile.objects.filter(slug="bad").exists()


def test_import_rejects_unknown_fields(tmp_path) -> None:
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"slug": "t", "name": "T", "registers": [{"name": "a", "adress": 0}]}))
    with pytest.raises(CommandError, match="unknown field"):
        call_command("profiles", "import", str(path))


def test_admin_imports_a_profile_file(admin_client) -> None:
    spec = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
    data = spec.to_dict() | {"slug": "uploaded", "name": "Uploaded"}
    upload = SimpleUploadedFile("uploaded.json", json.dumps(data).encode(), content_type="application/json")
    response = admin_client.post(reverse("admin:gateway_deviceprofile_import"), {"file": upload})
    assert response.status_code == 302
    assert load_spec(DeviceProfile.objects.get(slug="uploaded")).registers == spec.registers


def test_admin_import_of_a_bad_file_shows_the_error(admin_client) -> None:
    upload = SimpleUploadedFile("bad.json", b"[1, 2", content_type="application/json")
    before = DeviceProfile.objects.count()
    response = admin_client.post(reverse("admin:gateway_deviceprofile_import"), {"file": upload})
    assert "bad.json: not valid JSON: Expecting ',' delimiter" in error_page(response)
    assert DeviceProfile.objects.count() == before


def test_admin_exports_json(admin_client, generic_profile) -> None:
    response = admin_client.post(
        reverse("admin:gateway_deviceprofile_changelist"),
        {"action": "export_json", "_selected_action": [generic_profile.pk]},
    )
    assert response["Content-Disposition"] == 'attachment; filename="generic-ev-charger.json"'
    spec = ProfileSpec.from_dict(json.loads(response.content))
    assert profile_problems(spec) == []
    assert spec == load_spec(generic_profile)
