"""Admin: a site's load management and meter, a charge point's share settings, and the read-only
records of site load management (the override audit, the samples, the leases)."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from gateway.models import ChargePoint, DeviceProfile, Register, Site, StatusRule
from gateway.models.sitecontrol import AllocationOverride, SiteControlLease, SiteSample
from gateway.profiles.store import SITE_METER_PROFILE, save_spec, shipped_spec
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db


@pytest.fixture
def meter_profile(db: None) -> DeviceProfile:
    """The shipped site meter (reloaded, as generic_profile is: transactional tests flush migration rows)."""
    return save_spec(shipped_spec(SITE_METER_PROFILE), DeviceProfile, Register, StatusRule)


def site_form(**overrides: object) -> dict:
    """What the admin's add page posts for a load-managed, metered site (every field the page shows)."""
    return {
        "name": "Depot",
        "slug": "depot",
        "address": "",
        "limit_a": "63",
        "limit_kw": "",
        "control_period_s": "5",
        "base_load_a": "10",
        "margin_a": "1",
        "failsafe_current_a": "",
        "failsafe_timeout_s": "30",
        "meter_profile": "",
        "meter_host": "",
        "meter_port": "502",
        "meter_unit_id": "1",
        "meter_stale_s": "10",
    } | {key: str(value) for key, value in overrides.items()}


def test_a_load_managed_site_with_a_meter_saves(admin_client, meter_profile: DeviceProfile) -> None:
    response = admin_client.post(
        reverse("admin:gateway_site_add"),
        site_form(meter_profile=meter_profile.pk, meter_host="10.0.0.20", meter_unit_id=3, limit_kw=40),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    site = Site.objects.get(slug="depot")
    assert (site.limit_a, site.limit_kw, site.base_load_a, site.margin_a, site.failsafe_timeout_s) == (
        63.0,
        40.0,
        10.0,
        1.0,
        30,
    )
    assert (site.meter_profile, site.meter_host, site.meter_port, site.meter_unit_id) == (
        meter_profile,
        "10.0.0.20",
        502,
        3,
    )
    assert site.load_managed
    listing = admin_client.get(reverse("admin:gateway_site_changelist")).content.decode()
    assert "63 A / 40 kW" in listing and f"{SITE_METER_PROFILE} at 10.0.0.20:502/3" in listing


def test_the_site_page_has_the_load_management_and_meter_sections(admin_client, meter_profile, generic_profile) -> None:
    page = admin_client.get(reverse("admin:gateway_site_add")).content.decode()
    assert "Load management" in page and "Site meter" in page
    # The meter's choices are the meter profiles only: no charger's.
    assert f'<option value="{meter_profile.pk}">' in page
    assert f'<option value="{generic_profile.pk}">' not in page


def test_a_site_without_a_limit_is_not_load_managed(admin_client) -> None:
    response = admin_client.post(reverse("admin:gateway_site_add"), site_form(limit_a=""))
    assert response.status_code == 302
    assert not Site.objects.get(slug="depot").load_managed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limit_a": 5}, "At least 6 A per phase."),
        ({"limit_kw": 0.5}, "At least 1 kW."),
        ({"control_period_s": 0.5}, "At least 1 s."),
        ({"control_period_s": 61}, "At most 60 s."),
        ({"base_load_a": -1}, "Cannot be negative."),
        ({"failsafe_current_a": -1}, "Cannot be negative."),
        ({"failsafe_timeout_s": 5}, "At least 10 s (ABB&#x27;s minimum)."),
        ({"meter_stale_s": 1}, "At least 2 s."),
        ({"meter_port": 70000}, "Port must be between 1 and 65535."),
        ({"meter_unit_id": 256}, "Modbus unit id must be between 0 and 255."),
        ({"base_load_a": 50, "margin_a": 13}, "The base load and the margin leave nothing of the limit to share."),
        ({"meter_host": "10.0.0.20"}, "Choose the meter&#x27;s profile."),
        ({"meter_profile": "METER"}, "A meter needs a host."),
        # A charger's profile is not offered, nor taken, as a meter.
        ({"meter_profile": "GENERIC", "meter_host": "10.0.0.20"}, "Select a valid choice."),
    ],
)
def test_an_invalid_site_is_refused_with_the_fields_message(
    admin_client, meter_profile, generic_profile, overrides: dict, message: str
) -> None:
    profiles = {"METER": meter_profile.pk, "GENERIC": generic_profile.pk}
    overrides = {key: profiles.get(value, value) for key, value in overrides.items()}
    response = admin_client.post(reverse("admin:gateway_site_add"), site_form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Site.objects.filter(slug="depot").exists()


def test_a_limit_below_the_chargers_minimums_is_allowed_it_pauses_the_lowest(
    admin_client, site, generic_profile
) -> None:
    for index in range(3):  # 3 × 6 A minimum = 18 A > what a 16 A limit leaves
        make_charge_point(site, generic_profile, f"cp-{index}", 502 + index)
    change = reverse("admin:gateway_site_change", args=[site.pk])
    response = admin_client.post(change, site_form(name=site.name, slug=site.slug, limit_a=16, base_load_a=0))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Site.objects.get(pk=site.pk).limit_a == 16.0


def charge_point_form(site: Site, charger_profile: DeviceProfile, **overrides: object) -> dict:
    return {
        "slug": "cp-new", "name": "New", "site": site.pk, "host": "10.0.0.5", "port": 502, "unit_id": 1,
        "profile": charger_profile.pk, "poll_interval_ms": 1000, "enabled": "on", "priority": 0, "wiring": "L123",
        "min_session_current_a": "", "max_current_a": "",
    } | overrides  # fmt: skip


def test_a_charge_points_share_settings_save(admin_client, site, generic_profile) -> None:
    form = charge_point_form(site, generic_profile, priority=80, wiring="L2", min_session_current_a=8, max_current_a=16)
    response = admin_client.post(reverse("admin:gateway_chargepoint_add"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    cp = ChargePoint.objects.get(slug="cp-new")
    assert (cp.priority, cp.wiring, cp.min_session_current_a, cp.max_current_a) == (80, "L2", 8.0, 16.0)
    page = admin_client.get(reverse("admin:gateway_chargepoint_change", args=[cp.pk])).content.decode()
    assert "Load management" in page


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"priority": 101}, "At most 100."),
        ({"min_session_current_a": 5}, "At least 6 A (IEC 61851)."),
        ({"max_current_a": 100}, "At most 80 A."),
        ({"wiring": "L4"}, "Select a valid choice."),
        ({"profile": "METER"}, "Select a valid choice."),  # a meter's profile reads no charger
    ],
)
def test_an_invalid_charge_point_share_is_refused(
    admin_client, site, generic_profile, meter_profile, overrides: dict, message: str
) -> None:
    overrides = {key: meter_profile.pk if value == "METER" else value for key, value in overrides.items()}
    response = admin_client.post(
        reverse("admin:gateway_chargepoint_add"), charge_point_form(site, generic_profile, **overrides)
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ChargePoint.objects.filter(slug="cp-new").exists()


def test_overrides_samples_and_leases_are_read_only_records(admin_client, site) -> None:
    now = datetime.now(UTC)
    override = AllocationOverride.objects.create(
        charge_point_slug="cp-fleet", site_slug=site.slug, current_a=32.0, reason="fleet van", username="alice",
        via="web", created_at=now, expires_at=now + timedelta(hours=1),
    )  # fmt: skip
    sample = SiteSample.objects.create(
        site_slug=site.slug, at=now, limit_a=63.0, draw_a=41.5, allocated_a=40.0, state="controlling", status={}
    )
    lease = SiteControlLease.objects.create(site=site, poller_id="poller-a", host="edge-1", pid=4242, renewed_at=now)
    for model, row, shown in (
        ("allocationoverride", override, "fleet van"),
        ("sitesample", sample, "41.5"),
        ("sitecontrollease", lease, "poller-a"),
    ):
        listing = admin_client.get(reverse(f"admin:gateway_{model}_changelist"))
        assert listing.status_code == 200 and shown in listing.content.decode(), model
        assert f"/admin/gateway/{model}/add/" not in listing.content.decode()
        assert admin_client.get(reverse(f"admin:gateway_{model}_add")).status_code == 403, model
        change = reverse(f"admin:gateway_{model}_change", args=[row.pk])
        assert admin_client.post(change, {}).status_code == 403, model
        assert admin_client.post(reverse(f"admin:gateway_{model}_delete", args=[row.pk])).status_code == 403, model
    stored = AllocationOverride.objects.get(pk=override.pk)
    assert (stored.current_a, stored.ended_at) == (32.0, None)
    assert SiteSample.objects.count() == 1 and SiteControlLease.objects.get(pk=site.pk).poller_id == "poller-a"
    assert isinstance(override.pk, uuid.UUID)
