"""The sites' load management API: a token (or a login) to read the controller's status and history;
gateway.override_allocation to create or cancel an override (403 before anything is stored); the
service's checks as 400s naming the field; the audit's cursor pages."""

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.models import AllocationOverride, ApiToken, Site
from tests.api import fresh_throttle  # noqa: F401 (autouse)
from tests.conftest import make_charge_point
from tests.test_site_views import GENERIC_MAX_A, LIMIT_A, status, store

CONTROL = "/api/v1/sites/test-site/control/"
HISTORY = "/api/v1/sites/test-site/control/history/"
OVERRIDES = "/api/v1/sites/test-site/overrides/"


def token_client(name: str, *, may_override: bool) -> APIClient:
    user = get_user_model().objects.create_user(name, password="pw-sites-api-1")
    if may_override:
        user.user_permissions.add(Permission.objects.get(codename="override_allocation"))
    _, raw = ApiToken.issue(user, f"{name}-ems")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def managed(site: Site, generic_profile) -> Site:
    site.limit_a = LIMIT_A
    site.save()
    make_charge_point(site, generic_profile, "cp-1", 1502)
    return site


@pytest.mark.django_db
def test_reads_need_a_token_and_give_the_newest_status(managed: Site) -> None:
    assert APIClient().get(CONTROL).status_code == 401
    reader = token_client("reader", may_override=False)
    empty = reader.get(CONTROL).json()
    assert (empty["load_managed"], empty["state"], empty["status"]) == (True, "none", None)
    now = timezone.now()
    store(status(now - timedelta(seconds=30), draw_a=(40.0, 40.0, 40.0)))
    newest = status(now - timedelta(seconds=1))
    store(newest)
    answer = reader.get(CONTROL)
    assert answer.status_code == 200 and answer["ETag"]
    body = answer.json()
    assert body["status"] == newest.to_dict()
    assert (body["state"], body["stale"], body["limit_a"]) == ("controlling", False, LIMIT_A)
    assert body["headroom_a"] == pytest.approx(LIMIT_A - 50.6)
    assert 0.9 <= body["age_s"] < 10
    assert reader.get("/api/v1/sites/nowhere/control/").status_code == 404
    plain = Site.objects.create(slug="plain", name="Plain")
    assert reader.get(f"/api/v1/sites/{plain.slug}/control/").json()["load_managed"] is False


@pytest.mark.django_db
def test_the_history_pages_through_the_periods_newest_first_within_from_to(managed: Site) -> None:
    reader = token_client("reader", may_override=False)
    start = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
    for i in range(25):
        store(status(start + timedelta(seconds=5 * i), draw_a=(30.0 + i, 20.0, 20.0)))
    store(status(start, site="other-site"))
    seen, url = [], f"{HISTORY}?limit=10&from=2026-02-01T08:00:10Z&to=2026-02-01T08:01:40Z"
    while url:
        page = reader.get(url).json()
        seen += [sample["status"]["draw_a"][0] for sample in page["results"]]
        url = page["next"]
    # 08:00:10 .. 08:01:40 inclusive: periods 2 .. 20, newest first, no duplicates across pages.
    assert seen == [30.0 + i for i in range(20, 1, -1)]
    first = reader.get(f"{HISTORY}?limit=1").json()["results"][0]
    assert first["at"] == "2026-02-01T08:02:00.000Z" and first["draw_a"] == 54.0 and first["state"] == "controlling"
    refused = reader.get(f"{HISTORY}?from=yesterday")
    assert refused.status_code == 400 and "from is not an ISO 8601 date-time" in refused.json()["error"]["message"]
    assert reader.get(f"{HISTORY}?from=2026-02-01T08:00:00").status_code == 400  # no time zone
    assert reader.get(f"{HISTORY}?from=2026-02-02T00:00:00Z&to=2026-02-01T00:00:00Z").status_code == 400


@pytest.mark.django_db
def test_creating_an_override_needs_the_permission_before_anything_is_stored(managed: Site) -> None:
    body = {"charge_point": "cp-1", "current_a": 20, "duration_s": 3600}
    assert APIClient().post(OVERRIDES, body, format="json").status_code == 401
    reader = token_client("reader", may_override=False)
    refused = reader.post(OVERRIDES, body, format="json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_permitted"
    # Even a body the service would refuse, or an unknown site: 403 first, nothing stored.
    assert reader.post("/api/v1/sites/nowhere/overrides/", {"x": 1}, format="json").status_code == 403
    assert not AllocationOverride.objects.exists()
    assert reader.get(OVERRIDES).status_code == 200  # reading the audit needs a login only


@pytest.mark.django_db
def test_an_ems_overrides_a_charger_and_cancels_it(managed: Site) -> None:
    ems = token_client("ems", may_override=True)
    before = timezone.now()
    created = ems.post(
        OVERRIDES, {"charge_point": "cp-1", "current_a": 32, "duration_s": 1800, "reason": "bus 12"}, format="json"
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    row = AllocationOverride.objects.get()
    assert created["Location"] == f"/api/v1/sites/test-site/overrides/{row.id}/"
    assert (row.current_a, row.via, row.username, row.reason) == (32.0, "api", "ems", "bus 12")
    assert timedelta(minutes=29) < row.expires_at - before <= timedelta(minutes=31)
    assert body["id"] == str(row.id) and body["in_force"] is True and body["ended_at"] is None
    assert ems.get(created["Location"]).json() == body

    in_force = ems.get(f"{OVERRIDES}?state=in_force").json()["results"]
    assert [o["id"] for o in in_force] == [str(row.id)]

    reader = token_client("reader", may_override=False)
    assert reader.delete(created["Location"]).status_code == 403
    assert AllocationOverride.objects.get().ended_at is None
    cancelled = ems.delete(created["Location"])
    assert cancelled.status_code == 200
    row.refresh_from_db()
    assert row.ended_at is not None and row.ended_by == "ems"
    assert cancelled.json()["in_force"] is False and cancelled.json()["ended_by"] == "ems"
    assert ems.get(f"{OVERRIDES}?state=in_force").json()["results"] == []
    assert [o["id"] for o in ems.get(OVERRIDES).json()["results"]] == [str(row.id)]  # the audit keeps it
    assert ems.delete(f"{OVERRIDES}00000000-0000-0000-0000-000000000001/").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"current_a": 3}, "current_a", "out_of_range"),
        ({"current_a": GENERIC_MAX_A + 1}, "current_a", "out_of_range"),
        ({"duration_s": 59}, "duration_s", "out_of_range"),
        ({"duration_s": 86_401}, "duration_s", "out_of_range"),
        ({"duration_s": None, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "out_of_range"),
        ({"charge_point": "nope"}, "charge_point", "invalid"),
        ({"current_a": "many"}, "current_a", "invalid"),
        ({"duration_s": None}, "duration_s", "invalid"),
    ],
)
def test_the_services_checks_are_400s_naming_the_field(managed: Site, body: dict, field: str, code: str) -> None:
    ems = token_client("ems", may_override=True)
    asked = {"charge_point": "cp-1", "current_a": 16, "duration_s": 600} | body
    answer = ems.post(OVERRIDES, {key: value for key, value in asked.items() if value is not None}, format="json")
    assert answer.status_code == 400, answer.json()
    error = answer.json()["error"]
    assert error["code"] == code and field in error["fields"]
    assert not AllocationOverride.objects.exists()


@pytest.mark.django_db
def test_an_expiry_time_is_taken_as_given(managed: Site) -> None:
    ems = token_client("ems", may_override=True)
    until = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    answer = ems.post(
        OVERRIDES, {"charge_point": "cp-1", "current_a": 0, "expires_at": until.isoformat()}, format="json"
    )
    assert answer.status_code == 201, answer.json()
    assert AllocationOverride.objects.get().expires_at == until
