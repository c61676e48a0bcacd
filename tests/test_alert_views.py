"""The alerts page and acknowledging: login required, CSRF checked, filters (state, severity, site,
charge point) and the feed's JSON, who acknowledged and when kept and shown, a second
acknowledgement changing nothing."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import reverse

from gateway.alerts.messages import alert_json
from gateway.models import Alert

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ALERTS_URL = reverse("gateway:alerts")


def ack_url(alert: Alert | uuid.UUID) -> str:
    return reverse("gateway:acknowledge_alert", args=[getattr(alert, "id", alert)])


def make_alert(slug: str, minutes: int, **fields: object) -> Alert:
    """An alert raised `minutes` after T0 (newer ones list first)."""
    defaults = {
        "rule_name": "Charger faulted",
        "kind": "faulted",
        "severity": "critical",
        "charge_point_slug": slug,
        "site_slug": "site-a",
        "message": f"{slug}: the charger reports a fault.",
        "raised_at": T0 + timedelta(minutes=minutes),
    }
    return Alert.objects.create(**(defaults | fields))


@pytest.fixture
def alerts() -> dict[str, Alert]:
    """Four alerts, one per state: active, active and acknowledged, cleared unacknowledged, done."""
    return {
        "active": make_alert("cp-active", 4),
        "acked": make_alert(
            "cp-acked", 3, severity="warning", acknowledged_at=T0, acknowledged_by_name="bob", site_slug="site-b"
        ),
        "cleared": make_alert("cp-cleared", 2, severity="info", cleared_at=T0 + timedelta(minutes=3)),
        "done": make_alert(
            "cp-done", 1, cleared_at=T0 + timedelta(minutes=2), acknowledged_at=T0, acknowledged_by_name="bob"
        ),
    }


def operator(name: str = "alice") -> Client:
    """A logged-in browser whose posts are CSRF-checked, as a real browser's are."""
    user = get_user_model().objects.create_user(name, password="pw-1234567")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token(client: Client) -> str:
    """The token a page gives its forms (the alerts page renders one)."""
    client.get(ALERTS_URL)
    return client.cookies[settings.CSRF_COOKIE_NAME].value


def listed(client: Client, **query: str) -> list[str]:
    """Charge point slugs of the feed's JSON, in order."""
    response = client.get(ALERTS_URL, {"format": "json", **query})
    assert response.status_code == 200, response.content
    return [alert["charge_point"] for alert in response.json()["alerts"]]


def test_login_required(client: Client, alerts: dict[str, Alert]) -> None:
    response = client.get(ALERTS_URL)
    assert response.status_code == 302 and response["Location"].startswith(resolve_url(settings.LOGIN_URL))
    response = client.post(ack_url(alerts["active"]))
    assert response.status_code == 302 and response["Location"].startswith(resolve_url(settings.LOGIN_URL))
    alerts["active"].refresh_from_db()
    assert alerts["active"].acknowledged_at is None
    assert client.get(ALERTS_URL, {"format": "json"}).status_code == 302


def test_filters_by_state_severity_site_and_charge_point(alerts: dict[str, Alert]) -> None:
    client = operator()
    # Default: what needs attention (active, or cleared but never acknowledged), newest first.
    assert listed(client) == ["cp-active", "cp-acked", "cp-cleared"]
    assert listed(client, state="active") == ["cp-active", "cp-acked"]
    assert listed(client, state="unacknowledged") == ["cp-active", "cp-cleared"]
    assert listed(client, state="all") == ["cp-active", "cp-acked", "cp-cleared", "cp-done"]
    assert listed(client, state="all", severity="critical") == ["cp-active", "cp-done"]
    assert listed(client, state="all", site="site-b") == ["cp-acked"]
    assert listed(client, state="all", charge_point="cp-done") == ["cp-done"]
    response = client.get(ALERTS_URL, {"format": "json", "state": "all"}).json()
    assert response["total"] == 4
    assert response["alerts"][1] == alert_json(alerts["acked"])
    assert response["alerts"][1]["acknowledged_by"] == "bob"
    # Bad filters are refused, not ignored.
    for bad in ({"state": "open-ish"}, {"severity": "fatal"}, {"site": "nowhere"}):
        response = client.get(ALERTS_URL, {"format": "json", **bad})
        assert response.status_code == 400 and next(iter(bad)) in response.json()["error"]
    assert client.get(ALERTS_URL, {"severity": "fatal"}).status_code == 400


def test_page_shows_alerts_who_acknowledged_and_when(alerts: dict[str, Alert]) -> None:
    client = operator()
    page = client.get(ALERTS_URL, {"state": "all"}).content.decode()
    for slug in ("cp-active", "cp-acked", "cp-cleared", "cp-done"):
        assert slug in page
    assert "by bob at" in page and T0.strftime("%Y-%m-%d %H:%M:%S") in page
    # One Acknowledge form per unacknowledged alert, each with its CSRF token (and the logout form's).
    assert page.count(">Acknowledge</button>") == 2
    assert page.count('name="csrfmiddlewaretoken"') == 3
    assert ack_url(alerts["active"]) in page and ack_url(alerts["cleared"]) in page
    assert ack_url(alerts["acked"]) not in page
    filtered = client.get(ALERTS_URL, {"state": "active", "severity": "warning"}).content.decode()
    assert "cp-acked" in filtered and "cp-active" not in filtered
    assert "No alert matches" in client.get(ALERTS_URL, {"site": "site-b", "state": "unacknowledged"}).content.decode()


def test_acknowledge_needs_the_csrf_token(alerts: dict[str, Alert]) -> None:
    client = operator()
    response = client.post(ack_url(alerts["active"]), headers={"accept": "application/json"})
    assert response.status_code == 403
    alerts["active"].refresh_from_db()
    assert alerts["active"].acknowledged_at is None
    assert client.get(ack_url(alerts["active"])).status_code == 405


def test_acknowledge_keeps_who_and_when_and_a_second_one_changes_nothing(alerts: dict[str, Alert]) -> None:
    alice, carol = operator("alice"), operator("carol")
    before = datetime.now(UTC)
    response = alice.post(
        ack_url(alerts["active"]), headers={"X-CSRFToken": csrf_token(alice), "accept": "application/json"}
    )
    assert response.status_code == 200
    answer = response.json()["alert"]
    alerts["active"].refresh_from_db()
    first = alerts["active"].acknowledged_at
    assert first is not None and before <= first <= datetime.now(UTC)
    assert alerts["active"].acknowledged_by.get_username() == "alice"
    assert answer["acknowledged_by"] == "alice" and answer["id"] == str(alerts["active"].id)
    assert answer == alert_json(alerts["active"])
    # A second acknowledgement (another user, or a second click) keeps the first.
    response = carol.post(
        ack_url(alerts["active"]), headers={"X-CSRFToken": csrf_token(carol), "accept": "application/json"}
    )
    assert response.status_code == 200 and response.json()["alert"]["acknowledged_by"] == "alice"
    alerts["active"].refresh_from_db()
    assert alerts["active"].acknowledged_at == first and alerts["active"].acknowledged_by_name == "alice"
    # The page shows it; the feed no longer lists it as unacknowledged.
    assert "by alice at" in alice.get(ALERTS_URL).content.decode()
    assert listed(alice, state="unacknowledged") == ["cp-cleared"]
    # An unknown alert is a 404.
    headers = {"X-CSRFToken": csrf_token(alice), "accept": "application/json"}
    assert alice.post(ack_url(uuid.uuid4()), headers=headers).status_code == 404


def test_the_form_post_returns_to_the_page_it_came_from(alerts: dict[str, Alert]) -> None:
    client = operator()
    token = csrf_token(client)
    back = f"{ALERTS_URL}?state=all&severity=info"
    response = client.post(ack_url(alerts["cleared"]), {"csrfmiddlewaretoken": token, "next": back})
    assert response.status_code == 302 and response["Location"] == back
    alerts["cleared"].refresh_from_db()
    assert alerts["cleared"].acknowledged_by_name == "alice"
    # Never to another site.
    response = client.post(ack_url(alerts["active"]), {"csrfmiddlewaretoken": token, "next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == ALERTS_URL
