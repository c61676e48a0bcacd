"""The alerts API: the page's filters (compared with the page's own feed), cursor pages, one alert,
acknowledging through gateway.alerts.actions (who and when kept, the message owed), authentication
(a browser session needs its CSRF token to acknowledge, as on the page) and the error body."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from gateway.alerts.messages import alert_json
from gateway.models import Alert, AlertDelivery, ApiToken

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LIST_URL = "/api/v1/alerts/"


def detail_url(alert: Alert | uuid.UUID) -> str:
    return f"/api/v1/alerts/{getattr(alert, 'id', alert)}/"


def ack_url(alert: Alert | uuid.UUID) -> str:
    return f"{detail_url(alert)}acknowledge/"


def make_alert(slug: str, minutes: int, **fields: object) -> Alert:
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
    """One alert per state: active, active and acknowledged, cleared unacknowledged, done."""
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


def token_client(name: str = "noc") -> APIClient:
    """A client with a bearer token of a user without any permission (a login is all alerts need)."""
    user = get_user_model().objects.create_user(name, password="pw-alerts-1")
    _, raw = ApiToken.issue(user, name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def listed(client, **query: str) -> list[str]:
    response = client.get(LIST_URL, query)
    assert response.status_code == 200, response.content
    return [alert["charge_point"] for alert in response.json()["results"]]


def test_every_endpoint_needs_a_token_or_a_login(alerts: dict[str, Alert]) -> None:
    anonymous = APIClient()
    for url in (LIST_URL, detail_url(alerts["active"])):
        assert anonymous.get(url).status_code == 401
    response = anonymous.post(ack_url(alerts["active"]))
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"
    alerts["active"].refresh_from_db()
    assert alerts["active"].acknowledged_at is None
    api = token_client()
    assert api.get(LIST_URL).status_code == 200 and api.get(detail_url(alerts["active"])).status_code == 200
    assert api.get(ack_url(alerts["active"])).status_code == 405
    assert api.delete(detail_url(alerts["active"])).status_code == 405


def test_a_browser_session_acknowledges_only_with_its_csrf_token(alerts: dict[str, Alert]) -> None:
    """Session auth is the page's: a cross-site form could not acknowledge through the API either."""
    user = get_user_model().objects.create_user("alice", password="pw-alerts-2")
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.get(LIST_URL).status_code == 200
    refused = browser.post(ack_url(alerts["active"]))
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    page = Client()
    page.force_login(user)
    page.get("/alerts/")  # the page sets the CSRF cookie
    browser.cookies.update(page.cookies)
    token = page.cookies["csrftoken"].value
    assert browser.post(ack_url(alerts["active"]), HTTP_X_CSRFTOKEN=token).status_code == 200


def test_the_filters_are_the_pages(alerts: dict[str, Alert]) -> None:
    api = token_client()
    page = Client()
    page.force_login(get_user_model().objects.create_user("viewer", password="pw-alerts-3"))
    queries = [
        {},
        {"state": "active"},
        {"state": "unacknowledged"},
        {"state": "all"},
        {"state": "all", "severity": "critical"},
        {"state": "all", "site": "site-b"},
        {"state": "all", "charge_point": "cp-done"},
    ]
    for query in queries:
        feed = page.get("/alerts/", {"format": "json", **query}).json()["alerts"]
        assert api.get(LIST_URL, query).json()["results"] == feed, query
    assert listed(api) == ["cp-active", "cp-acked", "cp-cleared"]  # default: needs attention
    assert listed(api, state="all", severity="critical") == ["cp-active", "cp-done"]
    assert listed(api, state="all") == ["cp-active", "cp-acked", "cp-cleared", "cp-done"]


def test_bad_filters_are_a_400_naming_them(alerts: dict[str, Alert]) -> None:
    response = token_client().get(LIST_URL, {"state": "sleeping", "severity": "apocalyptic"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and set(error["fields"]) == {"state", "severity"}


def test_an_alert_is_its_message(alerts: dict[str, Alert]) -> None:
    api = token_client()
    assert api.get(detail_url(alerts["acked"])).json() == alert_json(alerts["acked"])
    missing = api.get(detail_url(uuid.uuid4()))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_acknowledge_keeps_who_and_when_and_a_second_one_changes_nothing(alerts: dict[str, Alert]) -> None:
    alice, carol = token_client("alice"), token_client("carol")
    before = datetime.now(UTC)
    response = alice.post(ack_url(alerts["active"]))
    assert response.status_code == 200
    alerts["active"].refresh_from_db()
    first = alerts["active"].acknowledged_at
    assert first is not None and before <= first <= datetime.now(UTC)
    assert alerts["active"].acknowledged_by.get_username() == "alice"
    assert response.json() == alert_json(alerts["active"])
    assert response.json()["event"] == "acknowledged" and response.json()["acknowledged_by"] == "alice"
    # The acknowledgement is owed to the alerts topic, as the page's is (the action's own path).
    assert AlertDelivery.objects.filter(alert=alerts["active"], event="acknowledged").count() == 1
    again = carol.post(ack_url(alerts["active"]))
    assert again.status_code == 200 and again.json()["acknowledged_by"] == "alice"
    alerts["active"].refresh_from_db()
    assert alerts["active"].acknowledged_at == first
    assert AlertDelivery.objects.filter(alert=alerts["active"], event="acknowledged").count() == 1
    assert listed(alice, state="unacknowledged") == ["cp-cleared"]
    missing = alice.post(ack_url(uuid.uuid4()))
    assert missing.status_code == 404 and missing.json()["error"] == {
        "status": 404,
        "code": "not_found",
        "message": "no such alert",
    }


def test_cursor_pages_neither_repeat_nor_skip_while_alerts_are_raised() -> None:
    for i in range(25):
        make_alert(f"cp-{i:02d}", i // 3)  # three at a time share a moment
    api = token_client()
    expected = [str(pk) for pk in Alert.objects.order_by("-raised_at", "-id").values_list("id", flat=True)]
    seen: list[str] = []
    response = api.get(LIST_URL, {"limit": "10", "state": "all"})
    while True:
        assert response.status_code == 200
        seen += [alert["id"] for alert in response.json()["results"]]
        if len(seen) == 10:
            make_alert("cp-new", 60)  # newer than the pages being read
            older = make_alert("cp-old", -60)
        if not response.json()["next"]:
            break
        response = api.get(response.json()["next"])
    assert seen == [*expected, str(older.id)]


def test_the_schema_declares_the_shape_sent(alerts: dict[str, Alert]) -> None:
    """The OpenAPI schema's Alert lists exactly the fields of the message the API sends."""
    from gateway.api.domain_serializers import AlertSerializer

    assert set(AlertSerializer().fields) == set(alert_json(alerts["acked"]))
