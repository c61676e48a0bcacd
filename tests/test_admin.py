"""Admin: charge points and profiles are validated with clear messages."""

import re

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from gateway.models import ChargePoint, Register
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db


def charge_point_form(site, profile, **overrides) -> dict:
    return {
        "slug": "cp-new",
        "name": "New",
        "site": site.pk,
        "host": "10.0.0.5",
        "port": 502,
        "unit_id": 1,
        "profile": profile.pk,
        "poll_interval_ms": 1000,
        "enabled": "on",
        "priority": 0,  # site load management's fields, as the add page fills them in
        "wiring": "L123",
    } | overrides


def test_admin_adds_a_valid_charge_point(admin_client, site, generic_profile) -> None:
    response = admin_client.post(reverse("admin:gateway_chargepoint_add"), charge_point_form(site, generic_profile))
    assert response.status_code == 302
    assert ChargePoint.objects.get(slug="cp-new").endpoint == "10.0.0.5:502/1"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 70000, "Port must be between 1 and 65535."),
        ("port", 0, "Port must be between 1 and 65535."),
        ("unit_id", 256, "Modbus unit id must be between 0 and 255."),
        ("poll_interval_ms", 10, "Poll interval must be at least 200 ms."),
        ("host", "bad host", "Host must not contain spaces."),
    ],
)
def test_admin_rejects_bad_values_with_clear_messages(
    admin_client, site, generic_profile, field, value, message
) -> None:
    response = admin_client.post(
        reverse("admin:gateway_chargepoint_add"), charge_point_form(site, generic_profile, **{field: value})
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ChargePoint.objects.filter(slug="cp-new").exists()


def test_admin_rejects_duplicate_endpoint(admin_client, site, generic_profile) -> None:
    make_charge_point(site, generic_profile, "cp-old", 502, host="10.0.0.5")
    response = admin_client.post(reverse("admin:gateway_chargepoint_add"), charge_point_form(site, generic_profile))
    assert response.status_code == 200
    assert "Another charge point already uses this host, port and unit id." in response.content.decode()
    assert not ChargePoint.objects.filter(slug="cp-new").exists()


def test_admin_disables_charge_points_in_bulk(admin_client, site, generic_profile) -> None:
    cp = make_charge_point(site, generic_profile, "cp-a", 1502)
    other = make_charge_point(site, generic_profile, "cp-b", 1503)
    assert cp.enabled is True  # the action, not the default, must disable it
    response = admin_client.post(
        reverse("admin:gateway_chargepoint_changelist"),
        {"action": "disable", "_selected_action": [cp.pk]},
    )
    assert response.status_code == 302
    cp.refresh_from_db()
    other.refresh_from_db()
    assert cp.enabled is False
    assert other.enabled is True  # only the selected ones


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"data_type": "float32", "length": 1}, "length", "occupies 2 register(s)"),
        ({"address": 65535, "data_type": "uint32", "length": 2}, "address", "runs past 65535"),
        ({"write_min": 0, "write_max": 10}, "access", "read-only register cannot have a write range"),
        ({"data_type": "bool"}, "data_type", "Coils and discrete inputs hold type 'bool'"),
        ({"data_type": "bit"}, "bit", "needs the bit number"),
        ({"role": "flux_capacitor"}, "role", "not a valid choice"),
    ],
)
def test_register_validation(generic_profile, fields, field, message) -> None:
    register = Register(profile=generic_profile, name="x", **({"address": 500} | fields))
    with pytest.raises(ValidationError) as error:
        register.full_clean()
    assert message in " ".join(error.value.message_dict[field])


def test_profile_page_shows_registers_inline(admin_client, generic_profile) -> None:
    response = admin_client.get(reverse("admin:gateway_deviceprofile_change", args=[generic_profile.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    # The name inputs of the inline rows ("energy_total" alone also matches the role option energy_total_wh).
    names = re.findall(r'name="registers-\d+-name" value="([^"]*)"', page)
    assert names == [register.name for register in generic_profile.registers.all()]
    assert "energy_total" in names
