"""The sessions API: the page's filters, cursor pages that neither repeat nor skip while sessions
are inserted, one session, the page's CSV, authentication and the error body."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client
from django.urls import reverse
from rest_framework.test import APIClient

from gateway.models import ApiToken, ChargingSession, Site
from gateway.telemetry import format_ts
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 3, 2, tzinfo=UTC)
LIST_URL = "/api/v1/sessions/"
CSV_URL = "/api/v1/sessions/export.csv"


def add_session(cp_slug: str, site_slug: str, start: datetime, minutes: float, energy_wh: float, **extra):
    end = start + timedelta(minutes=minutes)
    fields = {"ended_at": end, "end_reason": "finished", "peak_power_w": 11000.0} | extra
    return ChargingSession.objects.create(
        charge_point_slug=cp_slug,
        site_slug=site_slug,
        started_at=start,
        energy_wh=energy_wh,
        last_ts=end,
        last_seq=1,
        last_online_at=end,
        **fields,
    )


@pytest.fixture
def user():
    return get_user_model().objects.create_user("billing", password="pw-sessions-1")


@pytest.fixture
def api(user) -> APIClient:
    _, raw = ApiToken.issue(user, "billing")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def page(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def fleet(site, generic_profile) -> list[ChargingSession]:
    """Two sites, four sessions over two days (one still open)."""
    other = Site.objects.create(slug="harbour", name="Harbour")
    make_charge_point(site, generic_profile, "cp-a", 1601)
    make_charge_point(other, generic_profile, "cp-b", 1602)
    return [
        add_session("cp-a", site.slug, DAY + timedelta(hours=8), 60, 7000.0),
        add_session("cp-b", "harbour", DAY + timedelta(hours=9), 30, 3500.0),
        add_session("cp-a", site.slug, DAY + timedelta(days=1, hours=7), 90, 12250.0, peak_power_w=None),
        add_session("cp-b", "harbour", DAY + timedelta(days=1, hours=10), 15, 800.0, ended_at=None, end_reason=""),
    ]


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_every_endpoint_needs_a_token_or_a_login(fleet, user, api: APIClient) -> None:
    urls = [LIST_URL, f"/api/v1/sessions/{fleet[0].pk}/", CSV_URL]
    anonymous = APIClient()
    for url in urls:
        response = anonymous.get(url)
        assert response.status_code == 401, url
        assert response.json()["error"]["code"] == "not_authenticated"
    # No permission is needed beyond a login (as for the pages): a bare user's token reads.
    assert user.get_all_permissions() == set()
    browser = APIClient()
    browser.force_login(user)
    for url in urls:
        assert api.get(url).status_code == 200, url
        assert browser.get(url).status_code == 200, url
        assert api.post(url).status_code == 405, url  # read-only


def test_a_session_as_json(fleet, api: APIClient) -> None:
    open_one = fleet[3]
    body = api.get(f"/api/v1/sessions/{open_one.pk}/").json()
    assert body == {
        "id": open_one.pk,
        "charge_point": "cp-b",
        "site": "harbour",
        "started_at": "2026-03-03T10:00:00.000Z",
        "ended_at": None,
        "last_ts": "2026-03-03T10:15:00.000Z",
        "open": True,
        "duration_s": 900.0,
        "energy_wh": 800.0,
        "peak_power_w": 11000.0,
        "end_reason": None,
        "meter": "",
    }
    finished = api.get(f"/api/v1/sessions/{fleet[0].pk}/").json()
    assert (finished["open"], finished["end_reason"], finished["ended_at"]) == (
        False,
        "finished",
        "2026-03-02T09:00:00.000Z",
    )
    missing = api.get("/api/v1/sessions/999999/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_filters_are_the_pages(fleet, api: APIClient) -> None:
    a1, b1, a2, b2 = (s.pk for s in fleet)
    assert ids(api.get(LIST_URL)) == [b2, a2, b1, a1]  # newest first, as on the page
    assert ids(api.get(LIST_URL, {"site": "harbour"})) == [b2, b1]
    assert ids(api.get(LIST_URL, {"charge_point": "cp-a"})) == [a2, a1]
    assert ids(api.get(LIST_URL, {"date_from": "2026-03-03"})) == [b2, a2]
    assert ids(api.get(LIST_URL, {"date_to": "2026-03-02", "site": "test-site"})) == [a1]


def test_bad_filters_are_a_400_naming_them(fleet, api: APIClient) -> None:
    response = api.get(LIST_URL, {"date_from": "2026-03-04", "date_to": "2026-03-02"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["fields"] == {"non_field_errors": ["The range ends before it starts."]}
    error = api.get(LIST_URL, {"date_from": "March"}).json()["error"]
    assert list(error["fields"]) == ["date_from"]
    assert api.get(CSV_URL, {"date_from": "March"}).json()["error"]["fields"]["date_from"]


def test_cursor_pages_neither_repeat_nor_skip_while_sessions_arrive(site, api: APIClient) -> None:
    # 250 sessions, some starting at the same moment (ties are broken by id, not lost).
    for i in range(250):
        add_session("cp-a", site.slug, DAY + timedelta(minutes=i // 2), 5, float(i))
    expected = list(ChargingSession.objects.order_by("-started_at", "-id").values_list("id", flat=True))
    seen: list[int] = []
    response = api.get(LIST_URL, {"limit": "100"})
    pages = 0
    while True:
        seen += ids(response)
        pages += 1
        if pages == 1:
            # Sessions start while the client pages: a newer one (page 1 is already read) and
            # one older than everything: the next pages still follow on, and the older one comes last.
            add_session("cp-a", site.slug, DAY + timedelta(days=1), 5, 1.0)
            oldest = add_session("cp-a", site.slug, DAY - timedelta(days=1), 5, 1.0)
        if not response.json()["next"]:
            break
        response = api.get(response.json()["next"])
    assert seen == [*expected, oldest.pk]
    assert pages == 3
    assert len(ids(api.get(LIST_URL, {"limit": "5000"}))) == 252  # at most 1000 per page, here all


def test_a_list_asked_again_unchanged_is_a_304(fleet, api: APIClient) -> None:
    first = api.get(LIST_URL)
    assert api.get(LIST_URL, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    add_session("cp-a", "test-site", DAY + timedelta(days=2), 5, 1.0)
    assert api.get(LIST_URL, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 200


def csv_rows(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode())))


def test_the_csv_is_the_pages(fleet, api: APIClient, page: Client) -> None:
    for query in ({}, {"site": "test-site"}, {"date_from": "2026-03-03"}):
        response = api.get(CSV_URL, query, HTTP_ACCEPT="text/csv")
        assert response.status_code == 200 and response.streaming
        assert response["Content-Type"] == "text/csv; charset=utf-8"
        assert response["Content-Disposition"].startswith('attachment; filename="evdash-sessions-')
        ours = csv_rows(b"".join(response.streaming_content))
        theirs = csv_rows(b"".join(page.get(reverse("gateway:sessions_csv"), query).streaming_content))
        assert ours == theirs, query
    rows = csv_rows(b"".join(api.get(CSV_URL, {"site": "harbour"}).streaming_content))
    assert rows[0][0] == "session_id" and [row[0] for row in rows[1:]] == [str(fleet[1].pk), str(fleet[3].pk)]
    assert rows[1][3] == format_ts(fleet[1].started_at) and rows[2][8] == "open"


@pytest.mark.django_db(transaction=True)
async def test_the_csv_streams_under_asgi(site) -> None:
    """Under ASGI (daphne) the CSV is read in chunks by the async iterator, as the page's is."""
    from asgiref.sync import sync_to_async

    user = await sync_to_async(get_user_model().objects.create_user)("billing-async", password="pw-sessions-2")
    _, raw = await sync_to_async(ApiToken.issue)(user, "billing")
    for i in range(30):
        await sync_to_async(add_session)("cp-a", site.slug, DAY + timedelta(minutes=i), 5, float(i))
    response = await AsyncClient().get(CSV_URL, headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200 and response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(csv_rows(b"".join(chunks))) == 31


def test_the_schema_declares_the_shape_sent(fleet) -> None:
    """The OpenAPI schema's Session lists exactly the fields the API sends."""
    from gateway.api.domain_serializers import SessionSerializer

    assert set(SessionSerializer().fields) == set(SessionSerializer(fleet[0]).data)
