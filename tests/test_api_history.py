"""The history API: the charts' service and JSON (compared with the chart views' own answers),
authentication, refused input in the API's error body, and ETag on a closed range.

Samples are rows of the history table from scripted values; what the API must answer is the
chart view's JSON for the same request, less its per-request fields (server_now, query_ms).
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from gateway.models import ApiToken, ChargePoint, DeviceProfile, Site, TelemetrySample
from gateway.telemetry import format_ts
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db

PER_REQUEST = ("server_now", "query_ms")


def history_url(slug: str = "cp-1") -> str:
    return reverse("api:charge-point-history", args=[slug])


FLEET_URL = "/api/v1/history/fleet-power/"


def power_at(i: int) -> float:
    return float((i * 37) % 11_000 + 100)


def add_samples(cp: ChargePoint, times: list[datetime]) -> None:
    TelemetrySample.objects.bulk_create(
        TelemetrySample(
            charge_point=cp,
            ts=ts,
            seq=i + 1,
            status="charging",
            power_w=power_at(i),
            current_l1_a=power_at(i) / 230,
            current_l2_a=None,
            current_l3_a=1.0,
        )
        for i, ts in enumerate(times)
    )


def seconds_before(end: datetime, count: int, step_s: float) -> list[datetime]:
    return [end - timedelta(seconds=step_s * (count - i)) for i in range(count)]


@pytest.fixture
def cp(site: Site, generic_profile: DeviceProfile) -> ChargePoint:
    return make_charge_point(site, generic_profile, "cp-1", port=5020)


@pytest.fixture
def user():
    return get_user_model().objects.create_user("integration", password="pw-history-1")


@pytest.fixture
def api(user) -> APIClient:
    """A client with a bearer token of a user who has no permission at all (history needs a login only)."""
    _, raw = ApiToken.issue(user, "bi")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def page(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def without_per_request(body: dict) -> dict:
    return {key: value for key, value in body.items() if key not in PER_REQUEST}


# --- Authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [history_url(), FLEET_URL])
def test_every_history_endpoint_needs_a_token_or_a_login(cp: ChargePoint, user, api: APIClient, url: str) -> None:
    anonymous = APIClient()
    response = anonymous.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["status"] == 401 and response.json()["error"]["code"] == "not_authenticated"
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer evd_not-a-token")
    assert anonymous.get(url).json()["error"]["code"] == "authentication_failed"
    # A token of a user without any permission reads, as a logged-in user reads the charts.
    assert user.get_all_permissions() == set()
    assert api.get(url).status_code == 200
    # A revoked token no longer does.
    token = ApiToken.objects.get(user=user)
    token.revoke()
    assert api.get(url).status_code == 401
    browser = APIClient()
    browser.force_login(user)
    assert browser.get(url).status_code == 200
    assert api.post(url).status_code in (401, 405)


# --- One charge point ---------------------------------------------------------------------------


def test_raw_records_are_the_charts_json(cp: ChargePoint, api: APIClient, page: Client) -> None:
    end = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)
    add_samples(cp, seconds_before(end, 50, 1.0))
    query = {"start": format_ts(end - timedelta(minutes=5)), "end": format_ts(end), "roles": "power_w,current_l1_a"}
    response = api.get(history_url(), query)
    assert response.status_code == 200, response.content
    body = response.json()
    chart = page.get(reverse("gateway:charge_point_history", args=["cp-1"]), query).json()
    assert body == without_per_request(chart)
    assert body["source"] == "raw" and body["points"] == 50 and body["range"] == "custom"
    assert set(body["values"]) == {"power_w", "current_l1_a"}
    assert body["values"]["power_w"] == [power_at(i) for i in range(50)]
    assert body["t"][-1] == format_ts(end - timedelta(seconds=1))
    # The query time is a header, not part of the body (see the ETag test).
    assert response["Server-Timing"].startswith("db;dur=")


def test_a_long_range_is_bucketed_as_for_the_charts(cp: ChargePoint, api: APIClient, page: Client) -> None:
    end = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)
    add_samples(cp, seconds_before(end, 3000, 1.0))
    query = {"start": format_ts(end - timedelta(hours=1)), "end": format_ts(end), "max_points": "100"}
    body = api.get(history_url(), query).json()
    assert body == without_per_request(page.get(reverse("gateway:charge_point_history", args=["cp-1"]), query).json())
    assert body["bucket_s"] == 60 and body["points"] == 50
    # Each bucket: the mean, minimum and maximum of its samples, computed here from the script.
    first = [power_at(i) for i in range(60)]
    assert body["values"]["power_w"][0] == pytest.approx(sum(first) / 60)
    assert (body["min"]["power_w"][0], body["max"]["power_w"][0]) == (min(first), max(first))


def test_a_named_range_ends_now(cp: ChargePoint, api: APIClient) -> None:
    add_samples(cp, seconds_before(datetime.now(UTC), 10, 1.0))
    before = datetime.now(UTC)
    body = api.get(history_url(), {"range": "hour"}).json()
    end = datetime.fromisoformat(body["end"])
    assert body["range"] == "hour" and body["points"] == 10
    assert before - timedelta(seconds=1) <= end <= datetime.now(UTC)
    assert end - datetime.fromisoformat(body["start"]) == timedelta(hours=1)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"start": "yesterday"}, "start is not an ISO 8601"),
        ({"start": "2026-01-01T00:00:00"}, "needs a time zone"),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end must be after start"),
        ({"start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "longer than 31 days"),
        ({"range": "year"}, "range must be one of"),
        ({"max_points": "5"}, "max_points must be between"),
        ({"roles": "power_w,flux_capacitor"}, "unknown values flux_capacitor"),
    ],
)
def test_refused_input_is_a_400_with_the_reason(cp: ChargePoint, api: APIClient, query: dict, words: str) -> None:
    response = api.get(history_url(), query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == 400 and error["code"] == "invalid" and words in error["message"]


def test_an_unknown_charge_point_or_site_is_a_404(cp: ChargePoint, api: APIClient) -> None:
    response = api.get(history_url("cp-nowhere"))
    assert response.status_code == 404
    assert response.json()["error"] == {"status": 404, "code": "not_found", "message": "no charge point 'cp-nowhere'"}
    response = api.get(FLEET_URL, {"site": "atlantis"})
    assert response.status_code == 404 and response.json()["error"]["message"] == "no site 'atlantis'"


def test_a_closed_range_asked_again_is_a_304(cp: ChargePoint, api: APIClient) -> None:
    end = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)
    add_samples(cp, seconds_before(end, 20, 1.0))
    query = {"start": format_ts(end - timedelta(minutes=1)), "end": format_ts(end)}
    first = api.get(history_url(), query)
    etag = first["ETag"]
    again = api.get(history_url(), query, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    # A new record in the range changes the answer: a full 200 with another tag.
    TelemetrySample.objects.create(charge_point=cp, ts=end - timedelta(milliseconds=500), seq=99, status="charging")
    changed = api.get(history_url(), query, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag and changed.json()["points"] == 21


# --- The fleet's power --------------------------------------------------------------------------


def test_fleet_power_is_the_fleet_charts_json(site: Site, generic_profile: DeviceProfile, api, page) -> None:
    other = Site.objects.create(slug="harbour", name="Harbour")
    a = make_charge_point(site, generic_profile, "cp-a", 5021)
    b = make_charge_point(other, generic_profile, "cp-b", 5022)
    now = datetime.now(UTC)
    # Two hours of a sample every 30 s: whole buckets of 600 s, well before the one still filling.
    for cp in (a, b):
        add_samples(cp, seconds_before(now - timedelta(minutes=15), 240, 30.0))
    for query in ({"window_s": "7200", "bucket_s": "600"}, {"window_s": "7200", "bucket_s": "600", "site": "harbour"}):
        body = api.get(FLEET_URL, query).json()
        chart = page.get(reverse("gateway:fleet_power_history"), query).json()
        assert body["t"] == chart["t"] and body["power_w"] == chart["power_w"], query
        assert (body["bucket_s"], body["window_s"], body["site"]) == (600, 7200, query.get("site"))
        assert datetime.fromisoformat(body["end"]).timestamp() % 600 == 0  # completed buckets only
        assert datetime.fromisoformat(body["end"]) - datetime.fromisoformat(body["start"]) == timedelta(hours=2)
    everyone = api.get(FLEET_URL, {"window_s": "7200", "bucket_s": "600"}).json()
    harbour = api.get(FLEET_URL, {"window_s": "7200", "bucket_s": "600", "site": "harbour"}).json()
    assert len(everyone["t"]) >= 10
    # Both charge points have the same script: the fleet draws twice what one site draws.
    assert everyone["power_w"] == pytest.approx([2 * p for p in harbour["power_w"]])


def test_fleet_power_refuses_too_many_points(db, api: APIClient) -> None:
    response = api.get(FLEET_URL, {"window_s": "86400", "bucket_s": "1"})
    assert response.status_code == 400
    assert "over 5000 points" in response.json()["error"]["message"]
    assert api.get(FLEET_URL, {"window_s": "0"}).json()["error"]["code"] == "invalid"
