"""The site page: login, the state line and the chargers' table from the newest SiteSample, "no load
management" without a limit, overrides only with gateway.override_allocation and with the service's
checks (0 or the charger's range, 1 min to 24 h, audit row, cancel), the history's points, the
fleet summary's headroom lines, and the site socket (login, snapshot, a pushed status)."""

import re
from datetime import datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from evdash.asgi import application
from gateway.live.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from gateway.live.groups import site_control_group
from gateway.models import AllocationOverride, ChargePoint, Site, SiteSample
from gateway.sitecontrol.messages import ChargerShare, SiteStatus
from tests.conftest import make_charge_point, session_cookie_headers

LIMIT_A = 63.0
PASSWORD = "site-views-pw-1"
# The shipped generic profile's set_current_limit range (gateway/profiles/shipped/generic-ev-charger.json).
GENERIC_MIN_A, GENERIC_MAX_A = 6, 32


def status(
    at: datetime,
    draw_a: tuple[float, float, float] = (50.6, 40.0, 41.0),
    *,
    site: str = "test-site",
    state: str = "controlling",
    reason: str | None = None,
    chargers: tuple[ChargerShare, ...] | None = None,
    limit_a: float = LIMIT_A,
    draw_source: str = "meter",
    meter_age_s: float | None = 0.4,
) -> SiteStatus:
    """A controller's status as lane C publishes it (gateway/sitecontrol/messages.py)."""
    if chargers is None:
        chargers = (
            ChargerShare("cp-1", 16.0, (15.8, 15.9, 15.7), "charging", "fair share", priority=50),
            ChargerShare("cp-2", 0.0, (0.0, 0.0, 0.0), "paused", "paused: not enough room for its minimum (6 A)"),
        )
    return SiteStatus(
        site=site,
        at=at,
        poller="poller-1",
        state=state,
        reason=reason,
        limit_a=limit_a,
        draw_a=draw_a,
        draw_source=draw_source,
        meter_age_s=meter_age_s,
        base_load_a=(30.0, 24.0, 25.0),
        allocated_a=(16.0, 16.0, 16.0),
        chargers=chargers,
        margin_a=1.0,
    )


def store(site_status: SiteStatus) -> SiteSample:
    """The row lane E's consumer writes for a status."""
    return SiteSample.objects.create(
        site_slug=site_status.site,
        at=site_status.at,
        limit_a=site_status.limit_a,
        draw_a=max(site_status.draw_a),
        allocated_a=max(site_status.allocated_a),
        state=site_status.state,
        status=site_status.to_dict(),
    )


def user_with(name: str, *permissions: str) -> object:
    user = get_user_model().objects.create_user(name, password=PASSWORD)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def client_of(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def managed(site: Site, generic_profile) -> Site:
    site.limit_a = LIMIT_A
    site.save()
    make_charge_point(site, generic_profile, "cp-1", 1502, priority=50)
    make_charge_point(site, generic_profile, "cp-2", 1503, max_current_a=16.0)
    return site


@pytest.fixture
def operator(db) -> Client:
    return client_of(user_with("operator", "override_allocation"))


@pytest.fixture
def viewer(db) -> Client:
    return client_of(user_with("viewer"))


def text_of(html: str) -> str:
    """The page's words, tags and extra blanks removed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --- The page -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_site_pages_need_a_login(managed: Site) -> None:
    anonymous = Client()
    page = anonymous.get("/sites/test-site/")
    assert page.status_code == 302 and page["Location"].startswith("/accounts/login/")
    assert anonymous.get("/sites/").status_code == 302
    assert anonymous.get("/sites/test-site/history/?range=hour").status_code == 401
    assert anonymous.get("/fleet/site-headroom/").status_code == 401
    posted = anonymous.post("/sites/test-site/overrides/", {"charge_point": "cp-1", "current_a": "16"})
    assert posted.status_code in (401, 403)
    assert not AllocationOverride.objects.exists()


@pytest.mark.django_db
def test_the_page_shows_the_controllers_state_and_each_chargers_share(managed: Site, viewer: Client) -> None:
    now = timezone.now()
    store(status(now - timedelta(seconds=10), draw_a=(40.0, 40.0, 40.0)))
    store(status(now - timedelta(seconds=2)))
    page = viewer.get("/sites/test-site/")
    assert page.status_code == 200
    words = text_of(page.content.decode())
    assert "63 A per phase" in words
    # 63 A limit - 50.6 A on the most loaded phase (the newest status, not the older one).
    assert "12.4 A" in words
    assert "controlling" in words and "meter read 0.4 s ago" in words
    html = page.content.decode()
    row = re.search(r'<tr data-charger="cp-1".*?</tr>', html, re.S).group(0)
    assert "16 A" in text_of(row) and "15.8 / 15.9 / 15.7 A" in text_of(row) and "charging" in row
    paused = text_of(re.search(r'<tr data-charger="cp-2".*?</tr>', html, re.S).group(0))
    assert "paused: not enough room for its minimum (6 A)" in paused
    assert 'id="site-chart"' in html and "vendor/plotly.min.js" in html
    # A viewer sees the overrides but no form.
    assert "data-override-form" not in html and "data-override-cancel" not in html


@pytest.mark.django_db
def test_fallback_and_refused_say_why_and_an_old_status_says_it_is_stale(managed: Site, viewer: Client) -> None:
    now = timezone.now()
    store(status(now - timedelta(seconds=1), state="fallback", reason="meter stale for 12 s", draw_source="fallback"))
    words = text_of(viewer.get("/sites/test-site/").content.decode())
    assert "fallback: failsafe shares: meter stale for 12 s" in words
    SiteSample.objects.all().delete()
    refused = "poller-2 on host-b controls this site"
    store(status(now - timedelta(seconds=1), state="refused", reason=refused, draw_source="estimate"))
    words = text_of(viewer.get("/sites/test-site/").content.decode())
    assert f"refused: {refused}" in words and "no meter" in words
    SiteSample.objects.all().delete()
    # 3 periods of 5 s + 10 s = 25 s without a status: what is shown is history.
    store(status(now - timedelta(seconds=40)))
    words = text_of(viewer.get("/sites/test-site/").content.decode())
    assert "no status for 40 s (last: controlling)" in words


@pytest.mark.django_db
def test_a_site_without_a_limit_has_no_load_management(site: Site, generic_profile, viewer: Client) -> None:
    make_charge_point(site, generic_profile, "cp-1", 1502)
    page = viewer.get("/sites/test-site/")
    assert page.status_code == 200
    assert "No load management at this site" in page.content.decode()
    assert 'id="site-chart"' not in page.content.decode()
    assert viewer.get("/sites/nowhere/").status_code == 404
    listed = text_of(viewer.get("/sites/").content.decode())
    assert "none (no connection limit)" in listed


# --- Overrides from the page ----------------------------------------------------------------------


def override(client: Client, **fields: str):
    body = {"charge_point": "cp-1", "current_a": "20", "duration_min": "60", "reason": ""} | fields
    return client.post("/sites/test-site/overrides/", body)


@pytest.mark.django_db
def test_only_a_user_with_the_permission_gets_the_form_and_may_override(
    managed: Site, viewer: Client, operator
) -> None:
    refused = override(viewer)
    assert refused.status_code == 403 and refused.json()["code"] == "not_permitted"
    assert not AllocationOverride.objects.exists()
    html = operator.get("/sites/test-site/").content.decode()
    assert "data-override-form" in html
    # The form names each charger's range: the generic profile's 6..32 A, cp-2 capped by its installation.
    assert 'value="cp-1" data-min="6" data-max="32"' in html and 'value="cp-2" data-min="6" data-max="16"' in html

    before = timezone.now()
    created = override(operator, reason="fleet van leaves at 14:00")
    assert created.status_code == 201, created.json()
    body = created.json()["override"]
    row = AllocationOverride.objects.get()
    assert (row.charge_point_slug, row.site_slug, row.current_a, row.via) == ("cp-1", "test-site", 20.0, "web")
    assert row.username == "operator" and row.reason == "fleet van leaves at 14:00"
    assert row.charge_point == ChargePoint.objects.get(slug="cp-1") and row.ended_at is None
    assert timedelta(minutes=59) < row.expires_at - before <= timedelta(minutes=61)
    assert body["id"] == str(row.id) and body["in_force"] is True
    assert [o["id"] for o in created.json()["overrides"]] == [str(row.id)]
    assert str(row.id) in operator.get("/sites/test-site/").content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"current_a": "4"}, "current_a", f"4 A is not allowed for cp-1: 0 A (pause) or 6 to {GENERIC_MAX_A} A"),
        ({"current_a": "33"}, "current_a", "33 A is not allowed for cp-1"),
        ({"charge_point": "cp-2", "current_a": "20"}, "current_a", "0 A (pause) or 6 to 16 A"),
        ({"current_a": "-1"}, "current_a", "-1 A is not allowed"),
        ({"current_a": "lots"}, "current_a", "'lots' is not a current in A"),
        ({"current_a": ""}, "current_a", "a current in A is required"),
        ({"duration_min": "0.5"}, "duration_min", "an override lasts 1 minute to 24 hours"),
        ({"duration_min": "1441"}, "duration_min", "an override lasts 1 minute to 24 hours"),
        ({"reason": "x" * 301}, "reason", "the reason is 301 characters, at most 300"),
        ({"charge_point": "elsewhere"}, "charge_point", "no charge point 'elsewhere' at Test site"),
    ],
)
def test_the_service_refuses_what_the_controller_must_not_get(
    managed: Site, operator: Client, fields: dict, field: str, message: str
) -> None:
    answer = override(operator, **fields)
    assert answer.status_code == 400, answer.json()
    assert answer.json()["field"] == field
    assert message in answer.json()["error"]
    assert not AllocationOverride.objects.exists()


@pytest.mark.django_db
def test_the_bounds_themselves_are_allowed(managed: Site, operator: Client) -> None:
    for current, minutes in (("0", "1"), ("6", "1440"), (str(GENERIC_MAX_A), "60")):
        assert override(operator, current_a=current, duration_min=minutes).status_code == 201
    assert override(operator, charge_point="cp-2", current_a="16").status_code == 201


@pytest.mark.django_db
def test_an_override_on_a_site_without_a_limit_is_refused(site: Site, generic_profile, operator: Client) -> None:
    make_charge_point(site, generic_profile, "cp-1", 1502)
    answer = override(operator)
    assert answer.status_code == 400 and answer.json()["code"] == "not_load_managed"
    assert not AllocationOverride.objects.exists()


@pytest.mark.django_db
def test_a_new_override_replaces_the_one_in_force_and_cancel_ends_it(managed: Site, operator: Client) -> None:
    first = override(operator, current_a="10").json()["override"]
    second = override(operator, current_a="25").json()
    ended = AllocationOverride.objects.get(id=first["id"])
    assert ended.ended_at is not None and ended.ended_by == "operator"
    assert [o["current_a"] for o in second["overrides"]] == [25.0]

    viewer = client_of(user_with("viewer"))
    override_id = second["override"]["id"]
    refused = viewer.post(f"/sites/test-site/overrides/{override_id}/cancel/")
    assert refused.status_code == 403
    assert AllocationOverride.objects.get(id=override_id).ended_at is None

    cancelled = operator.post(f"/sites/test-site/overrides/{override_id}/cancel/")
    assert cancelled.status_code == 200
    row = AllocationOverride.objects.get(id=override_id)
    assert row.ended_at is not None and row.ended_by == "operator"
    assert cancelled.json()["overrides"] == [] and cancelled.json()["override"]["in_force"] is False
    # Cancelling again keeps the first end.
    again = operator.post(f"/sites/test-site/overrides/{override_id}/cancel/")
    assert again.status_code == 200 and AllocationOverride.objects.get(id=override_id).ended_at == row.ended_at
    assert operator.post("/sites/test-site/overrides/00000000-0000-0000-0000-000000000001/cancel/").status_code == 404


# --- History and the fleet's headroom ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_history_keeps_the_worst_period_of_each_slice(managed: Site, viewer: Client) -> None:
    now = timezone.now().replace(microsecond=0)
    for i in range(100):
        draw = 70.0 if i == 37 else 40.0 + (i % 5)  # one overshoot among ordinary periods
        store(status(now - timedelta(seconds=5 * (100 - i)), draw_a=(draw, 30.0, 30.0)))
    store(status(now - timedelta(hours=2)))  # outside the hour
    answer = viewer.get("/sites/test-site/history/?range=hour&max_points=10").json()
    points = answer["points"]
    assert len(points) == 10
    assert [p["at"] for p in points] == sorted(p["at"] for p in points)
    assert max(p["draw_a"] for p in points) == 70.0
    assert points[0]["chargers"]["cp-1"] == [15.9, 16.0] and points[0]["limit_a"] == LIMIT_A
    raw = viewer.get("/sites/test-site/history/?range=hour").json()["points"]
    assert len(raw) == 100
    assert viewer.get("/sites/test-site/history/?range=year").status_code == 400
    assert viewer.get("/sites/nowhere/history/").status_code == 404


@pytest.mark.django_db
def test_the_fleet_summary_shows_each_load_managed_sites_headroom(managed: Site, viewer: Client) -> None:
    other = Site.objects.create(slug="depot", name="Depot", limit_a=100.0)
    Site.objects.create(slug="plain", name="Plain")
    now = timezone.now()
    store(status(now - timedelta(seconds=1)))
    store(status(now - timedelta(minutes=3), site="depot", limit_a=100.0))
    words = text_of(viewer.get("/").content.decode())
    assert "63 A limit · 12.4 A headroom" in words
    assert "100 A limit · no status for 3 min" in words
    assert "Plain" not in re.search(r"data-site-headrooms.*?</section>", viewer.get("/").content.decode(), re.S)[0]
    lines = {line["site"]: line for line in viewer.get("/fleet/site-headroom/").json()["sites"]}
    assert set(lines) == {"test-site", "depot"}
    assert lines["test-site"]["summary"] == "63 A limit · 12.4 A headroom" and lines["test-site"]["stale"] is False
    assert lines["depot"]["stale"] is True and other.slug == "depot"


# --- The site socket -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_site_socket_sends_the_window_then_each_pushed_status(managed: Site) -> None:
    now = timezone.now()
    await sync_to_async(store)(status(now - timedelta(seconds=20)))
    await sync_to_async(store)(status(now - timedelta(minutes=11)))  # before the 10-minute window: not sent
    await sync_to_async(store)(status(now - timedelta(seconds=10), draw_a=(45.0, 40.0, 40.0)))
    user = await sync_to_async(user_with)("socket-viewer")
    headers = await sync_to_async(session_cookie_headers)(user)

    anonymous = WebsocketCommunicator(
        application, "/ws/sites/test-site/", headers=[h for h in headers if h[0] != b"cookie"]
    )
    connected, _ = await anonymous.connect()
    assert connected
    assert (await anonymous.receive_output(timeout=5))["code"] == CLOSE_UNAUTHENTICATED
    unknown = WebsocketCommunicator(application, "/ws/sites/nowhere/", headers=headers)
    await unknown.connect()
    assert (await unknown.receive_output(timeout=5))["code"] == CLOSE_NOT_FOUND

    socket = WebsocketCommunicator(application, "/ws/sites/test-site/", headers=headers)
    connected, _ = await socket.connect()
    assert connected
    snapshot = await socket.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot" and snapshot["more"] is False
    assert [s["draw_a"][0] for s in snapshot["statuses"]] == [50.6, 45.0]  # oldest first, the window only
    pushed = status(now, draw_a=(61.0, 50.0, 50.0))
    # The event lane E's consumer sends (gateway.live.push.push_site_status).
    await get_channel_layer().group_send(
        site_control_group("test-site"), {"type": "site.status", "status": pushed.to_dict()}
    )
    frame = await socket.receive_json_from(timeout=5)
    assert frame == {"type": "site_status", "status": pushed.to_dict()}
    await socket.disconnect()
