"""Admin: alert rules are validated by their model (clear messages, nothing saved); alerts and charging
sessions are listed with their filters and cannot be added, changed or deleted there."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from gateway.models import Alert, AlertRule, ChargingSession
from tests.conftest import make_charge_point
from tests.test_alerts import create_builtin_rules

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def rule_form(**overrides: object) -> dict:
    return {
        "name": "Hot connector",
        "kind": "threshold",
        "enabled": "on",
        "severity": "critical",
        "value": "temperature_c",
        "comparator": ">",
        "threshold": "70",
        "hold_s": "30",
        "hysteresis": "2",
        "site": "",
        "charge_point": "",
        "notify_emails": "ops@example.com, oncall@example.com",
        "webhook_url": "",
    } | overrides


def make_alert(slug: str = "cp-a", **fields: object) -> Alert:
    defaults = {
        "rule_name": "Charger faulted",
        "kind": "faulted",
        "severity": "critical",
        "charge_point_slug": slug,
        "site_slug": "test-site",
        "message": "The charger reports a fault.",
        "raised_at": T0,
    }
    return Alert.objects.create(**(defaults | fields))


def test_admin_adds_a_threshold_rule_and_lists_it(admin_client) -> None:
    create_builtin_rules()  # as migration 0010 does: a transactional test run before flushed them
    response = admin_client.post(reverse("admin:gateway_alertrule_add"), rule_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = AlertRule.objects.get(name="Hot connector")
    assert (rule.value, rule.comparator, rule.threshold, rule.hold_s) == ("temperature_c", ">", 70.0, 30.0)
    listing = admin_client.get(reverse("admin:gateway_alertrule_changelist")).content.decode()
    assert "temperature_c &gt; 70" in listing
    assert "2 e-mails" in listing
    # The built-in rules (migration 0010) are rows the admin lists like any other.
    built_in = {"faulted", "offline", "stale", "temperature", "command_failed"}  # migration 0010's
    assert built_in <= set(AlertRule.objects.exclude(kind="threshold").values_list("kind", flat=True))
    assert "every charge point" in listing


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"comparator": ""}, "A threshold rule needs this."),
        ({"threshold": ""}, "A threshold rule needs this."),
        ({"hold_s": "-1"}, "Hold time and hysteresis cannot be negative."),
        ({"value": "temperature"}, "Select a valid choice."),  # not a telemetry value: it would watch nothing
    ],
)
def test_admin_refuses_a_bad_rule_with_the_models_message(admin_client, overrides: dict, message: str) -> None:
    response = admin_client.post(reverse("admin:gateway_alertrule_add"), rule_form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not AlertRule.objects.filter(name="Hot connector").exists()


def test_admin_refuses_a_rule_scoped_to_both_a_site_and_a_charge_point(admin_client, site, generic_profile) -> None:
    cp = make_charge_point(site, generic_profile, "cp-a", 1502)
    response = admin_client.post(reverse("admin:gateway_alertrule_add"), rule_form(site=site.pk, charge_point=cp.pk))
    assert response.status_code == 200
    assert "Scope a rule to a site or to a charge point, not both." in response.content.decode()
    # One of them is fine.
    response = admin_client.post(reverse("admin:gateway_alertrule_add"), rule_form(charge_point=cp.pk))
    assert response.status_code == 302
    listing = admin_client.get(reverse("admin:gateway_alertrule_changelist")).content.decode()
    assert "charge point cp-a" in listing


def test_alerts_are_listed_filtered_and_read_only(admin_client) -> None:
    active = make_alert("cp-a")
    cleared = make_alert(
        "cp-b", cleared_at=T0 + timedelta(minutes=5), acknowledged_at=T0 + timedelta(minutes=1),
        acknowledged_by_name="alice",
    )  # fmt: skip
    changelist = reverse("admin:gateway_alert_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "cp-a" in page and "cp-b" in page and "alice" in page
    # Filters: still active (cleared_at empty), by severity, by site.
    only_active = admin_client.get(changelist, {"cleared_at__isnull": "True"}).content.decode()
    assert "cp-a" in only_active and "cp-b" not in only_active
    assert admin_client.get(changelist, {"severity__exact": "warning"}).context["cl"].result_count == 0
    assert admin_client.get(changelist, {"site_slug__exact": "test-site"}).context["cl"].result_count == 2
    # Read-only: no add, no save, no delete.
    assert admin_client.get(reverse("admin:gateway_alert_add")).status_code == 403
    change = admin_client.get(reverse("admin:gateway_alert_change", args=[active.pk])).content.decode()
    assert 'name="_save"' not in change
    response = admin_client.post(reverse("admin:gateway_alert_change", args=[cleared.pk]), {"message": "edited"})
    assert response.status_code == 403
    delete = admin_client.post(reverse("admin:gateway_alert_delete", args=[cleared.pk]), {"post": "yes"})
    assert delete.status_code == 403
    cleared.refresh_from_db()
    assert cleared.message == "The charger reports a fault."


def test_charging_sessions_are_listed_and_read_only(admin_client) -> None:
    session = ChargingSession.objects.create(
        charge_point_slug="cp-a", site_slug="test-site", started_at=T0, ended_at=T0 + timedelta(hours=1),
        energy_wh=7400.0, peak_power_w=11000.0, last_ts=T0 + timedelta(hours=1), last_seq=3600,
        last_online_at=T0 + timedelta(hours=1),
    )  # fmt: skip
    page = admin_client.get(reverse("admin:gateway_chargingsession_changelist")).content.decode()
    assert "cp-a" in page and "7.40 kWh" in page and "11.0 kW" in page
    assert admin_client.get(reverse("admin:gateway_chargingsession_add")).status_code == 403
    change = admin_client.get(reverse("admin:gateway_chargingsession_change", args=[session.pk])).content.decode()
    assert 'name="_save"' not in change
    response = admin_client.post(reverse("admin:gateway_chargingsession_change", args=[session.pk]), {"energy_wh": "1"})
    assert response.status_code == 403
    session.refresh_from_db()
    assert session.energy_wh == 7400.0
