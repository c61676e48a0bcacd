"""Dashboard pages: login required, server-rendered first paint, air-gapped assets."""

import importlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.mail import EmailMessage
from django.test import Client, override_settings
from django.urls import clear_url_caches, reverse
from pytest_django.live_server_helper import LiveServer

from gateway.models import ChargePoint, DeviceProfile, LatestTelemetry, Site
from gateway.profiles.decode import TelemetryFields
from gateway.readings import ATTENTION_ORDER, SUMMARY_ORDER, format_age, format_extra
from gateway.telemetry import Record, build_record, parse_ts
from tests.browser import launch_chromium
from tests.conftest import make_charge_point

if TYPE_CHECKING:
    from playwright.sync_api import Page

EXTERNAL_URL = re.compile(r"https?://", re.IGNORECASE)


def add_charge_point(site: Site, profile: DeviceProfile, slug: str, **fields: object) -> ChargePoint:
    """A charge point on a Modbus endpoint of its own (nothing listens there: pages don't poll)."""
    fields.setdefault("port", 5020 + ChargePoint.objects.count())
    return make_charge_point(site, profile, slug, **fields)  # type: ignore[arg-type]


def store_record(cp: ChargePoint, *, age: timedelta = timedelta(0), **values: float) -> Record:
    """Store a charging record of `cp` as its latest telemetry, `age` old."""
    record = build_record(
        charge_point=cp.slug,
        site=cp.site.slug,
        profile=cp.profile.slug,
        seq=1,
        fields=TelemetryFields(status="charging", iec61851_state="C", values=values, extra={"serial": "SN-1"}),
        moment=datetime.now(UTC) - age,
    )
    LatestTelemetry.objects.create(charge_point=cp, record=record, source_ts=parse_ts(record["ts"]))
    return record


def tile_html(html: str, slug: str) -> str:
    """The markup of the fleet tile of `slug`."""
    match = re.search(rf'<a class="tile [^"]*"[^>]*data-charge-point="{slug}".*?</a>', html, re.S)
    assert match, f"no tile for {slug}"
    return match.group(0)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/", "/chargepoints/cp-1/"])
def test_anonymous_is_redirected_to_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


DASHBOARD_PATHS = ["/", "/chargepoints/cp-1/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", DASHBOARD_PATHS)
def test_dashboard_answers_get_and_head_only(
    admin_client: Client, client: Client, site: Site, generic_profile: DeviceProfile, path: str
) -> None:
    add_charge_point(site, generic_profile, "cp-1")
    for method in ("trace", "put", "post", "delete", "patch", "options"):
        # Refused for a logged-in user and, before the login redirect, for an anonymous one.
        for who in (admin_client, client):
            response = getattr(who, method)(path)
            assert response.status_code == 405, (method, path)
            assert sorted(response["Allow"].split(", ")) == ["GET", "HEAD"]
    # Positive control: GET renders, HEAD answers the same status without a body.
    assert admin_client.get(path).status_code == 200
    head = admin_client.head(path)
    assert (head.status_code, head.content) == (200, b"")


def content_security_policy(response) -> dict[str, list[str]]:
    """The response's Content-Security-Policy header as {directive: [sources]}."""
    directives = (part.split() for part in response["Content-Security-Policy"].split(";") if part.strip())
    return {name: sources for name, *sources in directives}


@pytest.mark.django_db
def test_pages_send_a_content_security_policy(
    admin_client: Client, client: Client, site: Site, generic_profile: DeviceProfile
) -> None:
    add_charge_point(site, generic_profile, "cp-1")
    responses = [admin_client.get(path) for path in (*DASHBOARD_PATHS, reverse("admin:index"))]
    responses.append(client.get(reverse("login")))
    for response in responses:
        assert response.status_code == 200
        policy = content_security_policy(response)
        # Scripts only from our own static files: no inline script, no eval, no other host.
        assert policy["script-src"] == ["'self'"]
        assert policy["default-src"] == ["'self'"]
        assert policy["connect-src"] == ["'self'"]  # the page's own WebSocket origin, nothing else
        assert policy["object-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["form-action"] == ["'self'"]
        assert policy["base-uri"] == ["'self'"]


PASSWORD = "the-right-password-42"


@pytest.fixture
def fast_hasher(settings) -> None:
    """Logins in a loop: hash with MD5 instead of 1,000,000 PBKDF2 rounds (tests only)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.mark.django_db
def test_failed_logins_are_throttled_on_dashboard_and_admin(
    client: Client, django_user_model: type[AbstractBaseUser], settings, fast_hasher: None
) -> None:
    user = django_user_model.objects.create_user(username="operator", password=PASSWORD, is_staff=True)  # type: ignore[attr-defined]
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5
    login_pages = [reverse("login"), reverse("admin:login")]
    # Failures on either login page count together: both authenticate through django-axes.
    for attempt in range(limit - 1):
        response = client.post(login_pages[attempt % 2], {"username": "operator", "password": "wrong"})
        assert response.status_code == 200, attempt  # the form again, with its error
    assert client.post(login_pages[1], {"username": "operator", "password": "wrong"}).status_code == 429
    # Locked: even the right password is refused, on both pages, and nobody is logged in.
    for page in login_pages:
        response = client.post(page, {"username": "operator", "password": PASSWORD})
        assert response.status_code == 429
        assert "Too many failed logins" in response.content.decode()
        assert "_auth_user_id" not in client.session
    # The user name from this address is locked, not the user: another address still logs in.
    other_address = Client(REMOTE_ADDR="192.0.2.7")
    response = other_address.post(reverse("login"), {"username": "operator", "password": PASSWORD})
    assert response.status_code == 302
    assert other_address.session["_auth_user_id"] == str(user.pk)


@pytest.mark.django_db
def test_a_successful_login_resets_the_failure_count(
    client: Client, django_user_model: type[AbstractBaseUser], settings, fast_hasher: None
) -> None:
    django_user_model.objects.create_user(username="operator", password=PASSWORD)  # type: ignore[attr-defined]
    for _ in range(2):
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            assert client.post(reverse("login"), {"username": "operator", "password": "wrong"}).status_code == 200
        assert client.post(reverse("login"), {"username": "operator", "password": PASSWORD}).status_code == 302
        client.logout()


@pytest.fixture
def mail_server() -> Iterator[None]:
    """Settings and URLs as they are with EMAIL_HOST set (evdash/urls.py reads the setting once)."""
    import evdash.urls

    def reload_urls() -> None:
        importlib.reload(evdash.urls)
        clear_url_caches()

    try:
        with override_settings(EMAIL_HOST="smtp.example.com", PASSWORD_RESET_ENABLED=True):
            reload_urls()
            yield
    finally:
        reload_urls()


@pytest.mark.django_db
def test_no_password_reset_without_a_mail_server(client: Client, admin_client: Client) -> None:
    assert client.get("/accounts/password_reset/").status_code == 404
    assert admin_client.get("/admin/password_reset/").status_code == 404
    login = client.get(reverse("login")).content.decode()
    assert "password_reset" not in login and "Forgot" not in login
    assert "password_reset" not in client.get(reverse("admin:login")).content.decode()
    # Positive control: the login page itself works.
    assert 'name="password"' in login


@pytest.mark.django_db
def test_password_reset_with_a_mail_server(
    mail_server: None, client: Client, django_user_model: type[AbstractBaseUser], mailoutbox: list[EmailMessage]
) -> None:
    django_user_model.objects.create_user(username="operator", email="op@example.com", password=PASSWORD)  # type: ignore[attr-defined]
    login = client.get(reverse("login")).content.decode()
    assert f'href="{reverse("password_reset")}"' in login
    assert 'href="/admin/password_reset/"' in client.get(reverse("admin:login")).content.decode()
    assert client.get("/admin/password_reset/").status_code == 200
    response = client.post(reverse("password_reset"), {"email": "op@example.com"})
    assert response.status_code == 302
    assert [message.to for message in mailoutbox] == [["op@example.com"]]


@pytest.mark.django_db
def test_login_page_renders(client: Client) -> None:
    response = client.get(reverse("login"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="username"' in html and 'name="password"' in html
    assert not EXTERNAL_URL.search(html)


@pytest.mark.django_db
def test_fleet_lists_enabled_charge_points_only(
    admin_client: Client, site: Site, generic_profile: DeviceProfile
) -> None:
    add_charge_point(site, generic_profile, "cp-on")
    add_charge_point(site, generic_profile, "cp-off", enabled=False)
    response = admin_client.get(reverse("gateway:fleet"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-charge-point="cp-on"' in html
    assert "cp-off" not in html
    assert reverse("gateway:charge_point", args=["cp-on"]) in tile_html(html, "cp-on")


@pytest.mark.django_db
def test_fleet_tile_shows_latest_record(admin_client: Client, site: Site, generic_profile: DeviceProfile) -> None:
    cp = add_charge_point(site, generic_profile, "cp-1")
    store_record(cp, power_w=7360.0, session_energy_wh=12_345.0)
    add_charge_point(site, generic_profile, "cp-2")
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    tile = tile_html(html, "cp-1")
    assert "status-charging" in tile and "is-stale" not in tile
    assert re.search(r'class="tile-status">Charging<', tile)
    assert re.search(r'class="tile-power">7\.4 kW<', tile)
    assert re.search(r'class="tile-energy">12\.35 kWh<', tile)
    assert "status-nodata" in tile_html(html, "cp-2")
    assert re.search(r"data-summary-power>7\.4 kW<", html)
    assert re.search(r'data-summary-status="charging">.*?summary-count">1<', html, re.S)


@pytest.mark.django_db
def test_fleet_marks_old_records_stale(admin_client: Client, site: Site, generic_profile: DeviceProfile) -> None:
    # 3 poll intervals of 250 ms are below the 10 s floor: 9 s old is fresh, 11 s old is stale;
    # at 5 s a poll, 3 intervals are 15 s.
    fresh = add_charge_point(site, generic_profile, "cp-fresh")
    stale = add_charge_point(site, generic_profile, "cp-stale")
    slow = add_charge_point(site, generic_profile, "cp-slow", poll_interval_ms=5000)
    store_record(fresh, age=timedelta(seconds=9), power_w=1000.0)
    store_record(stale, age=timedelta(seconds=11), power_w=2000.0)
    store_record(slow, age=timedelta(seconds=14), power_w=4000.0)
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    assert "is-stale" not in tile_html(html, "cp-fresh")
    assert "is-stale" in tile_html(html, "cp-stale")
    assert "is-stale" not in tile_html(html, "cp-slow")
    # A stale charge point's power is unknown: it leaves the fleet total.
    assert re.search(r"data-summary-power>5\.0 kW<", html)


@pytest.mark.django_db
def test_fleet_site_filter(admin_client: Client, site: Site, generic_profile: DeviceProfile) -> None:
    other = Site.objects.create(slug="street", name="Street")
    add_charge_point(site, generic_profile, "cp-depot")
    add_charge_point(other, generic_profile, "cp-street")
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    assert 'name="site"' in html
    html = admin_client.get(reverse("gateway:fleet"), {"site": "street"}).content.decode()
    assert 'data-charge-point="cp-street"' in html
    assert 'data-charge-point="cp-depot"' not in html
    assert admin_client.get(reverse("gateway:fleet"), {"site": "nowhere"}).status_code == 404


def page_config(html: str) -> dict:
    """The page's json_script settings."""
    match = re.search(r'<script id="page-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no page-config"
    return json.loads(match.group(1))


@pytest.mark.django_db
def test_fleet_lists_faulted_and_offline_first(
    admin_client: Client, site: Site, generic_profile: DeviceProfile
) -> None:
    statuses = {"cp-a": "charging", "cp-b": "offline", "cp-c": "available", "cp-d": "faulted", "cp-e": None}
    for slug, status in statuses.items():
        cp = add_charge_point(site, generic_profile, slug)
        if status:
            record = live_record(cp, 1, status=status)
            LatestTelemetry.objects.create(charge_point=cp, record=record, source_ts=parse_ts(record["ts"]))
    stale = add_charge_point(site, generic_profile, "cp-f")
    store_record(stale, age=timedelta(minutes=5), power_w=1.0)
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    # The server's order (tiles and the page's list alike): faulted, offline, stale, no data, then working.
    expected = ["cp-d", "cp-b", "cp-f", "cp-e", "cp-a", "cp-c"]
    assert re.findall(r'data-charge-point="([^"]+)"', html) == expected
    config = page_config(html)
    assert [cp["slug"] for cp in config["charge_points"]] == expected
    # The page script gets the order itself, not a copy of it.
    assert config["attention_order"] == list(ATTENTION_ORDER)
    assert config["summary_order"] == list(SUMMARY_ORDER)
    assert config["charge_points"][0] | {"record": None} == {
        "slug": "cp-d",
        "name": "CP-D",
        "site": site.slug,
        "site_name": site.name,
        "poll_interval_ms": 250,
        "stale_after_ms": 10_000,
        "record": None,
    }
    assert config["charge_point_url"] == "/chargepoints/__slug__/"


@pytest.mark.django_db
def test_fleet_first_paint_is_bounded(admin_client: Client, site: Site, generic_profile: DeviceProfile) -> None:
    from gateway.views import FIRST_PAINT_TILES

    for n in range(FIRST_PAINT_TILES + 5):
        add_charge_point(site, generic_profile, f"cp-{n:03d}")
    response = admin_client.get(reverse("gateway:fleet"))
    html = response.content.decode()
    # A few dozen tiles in the HTML; the page's data lists every charge point for the script.
    assert html.count('<a class="tile ') == FIRST_PAINT_TILES
    assert len(page_config(html)["charge_points"]) == FIRST_PAINT_TILES + 5
    assert re.search(rf'class="summary-value">{FIRST_PAINT_TILES + 5}<', html)
    assert f"{FIRST_PAINT_TILES} of {FIRST_PAINT_TILES + 5} charge points shown" in html  # <noscript>


@pytest.mark.django_db
def test_fleet_of_one_site_subscribes_to_that_site(
    admin_client: Client, site: Site, generic_profile: DeviceProfile
) -> None:
    add_charge_point(site, generic_profile, "cp-1")
    assert page_config(admin_client.get(reverse("gateway:fleet")).content.decode())["ws_path"] == "/ws/fleet/"
    html = admin_client.get(reverse("gateway:fleet"), {"site": site.slug}).content.decode()
    assert page_config(html)["ws_path"] == f"/ws/fleet/?site={site.slug}"
    assert page_config(html)["site"] == site.slug


def test_attention_order_covers_every_summary_bucket() -> None:
    from gateway.readings import attention_rank

    assert sorted(ATTENTION_ORDER) == sorted(SUMMARY_ORDER)
    assert ATTENTION_ORDER[:2] == ("faulted", "offline")
    assert attention_rank("faulted") < attention_rank("offline") < attention_rank("charging")
    assert attention_rank("some-new-status") == len(ATTENTION_ORDER)


@pytest.mark.django_db
def test_charge_point_page(admin_client: Client, site: Site, generic_profile: DeviceProfile) -> None:
    cp = add_charge_point(site, generic_profile, "cp-1", port=1502, unit_id=3)
    store_record(cp, power_w=11_000.0, energy_total_wh=1_234_567.0, temperature_c=41.5)
    response = admin_client.get(reverse("gateway:charge_point", args=["cp-1"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "127.0.0.1:1502/3" in html
    assert generic_profile.name in html and site.name in html
    assert re.search(r'data-value="power_w">11\.0<', html)
    assert re.search(r'data-value="energy_total_wh">1234\.6<', html)
    assert re.search(r'data-value="temperature_c">41\.5<', html)
    assert re.search(r'data-value="current_limit_a">—<', html)
    assert "C: charging" in html
    assert "SN-1" in html
    assert 'id="power-chart"' in html and 'id="current-chart"' in html
    assert 'id="page-config"' in html


@pytest.mark.django_db
def test_charge_point_page_404_for_unknown_slug(admin_client: Client) -> None:
    response = admin_client.get(reverse("gateway:charge_point", args=["no-such-cp"]))
    assert response.status_code == 404


@pytest.mark.django_db
def test_initial_data_is_escaped(admin_client: Client, site: Site, generic_profile: DeviceProfile) -> None:
    cp = add_charge_point(site, generic_profile, "cp-1", name="</script><script>alert(1)</script>")
    record = store_record(cp, power_w=1.0)
    record["extra"] = {"note": "</script><b>x</b>"}
    LatestTelemetry.objects.filter(charge_point=cp).update(record=record)
    for url in (reverse("gateway:fleet"), reverse("gateway:charge_point", args=["cp-1"])):
        response = admin_client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        assert "<script>alert(1)" not in html
        assert "<b>x</b>" not in html
        # The hostile text is on the page, as text: shown escaped, not dropped.
        assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # ... and in the page's JSON, escaped for a <script> block (json_script).
    assert "\\u003C/script\\u003E\\u003Cb\\u003Ex\\u003C/b\\u003E" in html


@pytest.mark.django_db
def test_pages_use_local_plotly_and_no_external_url(
    admin_client: Client, site: Site, generic_profile: DeviceProfile
) -> None:
    cp = add_charge_point(site, generic_profile, "cp-1")
    store_record(cp, power_w=3000.0)
    for url in (reverse("gateway:fleet"), reverse("gateway:charge_point", args=["cp-1"])):
        html = admin_client.get(url).content.decode()
        assert '<script defer src="/static/vendor/plotly.min.js"></script>' in html
        assert not EXTERNAL_URL.search(html), EXTERNAL_URL.search(html)
        # No inline script: data travels in json_script blocks only.
        inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html)
        assert inline == []


@pytest.mark.django_db
def test_nav_links(admin_client: Client, client: Client, django_user_model: type[AbstractBaseUser]) -> None:
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    assert reverse("admin:index") in html
    assert re.search(rf'<form[^>]*method="post"[^>]*action="{reverse("logout")}"', html)
    user = django_user_model.objects.create_user(username="operator", password="x-long-password-1")  # type: ignore[attr-defined]
    client.force_login(user)
    html = client.get(reverse("gateway:fleet")).content.decode()
    assert reverse("admin:index") not in html


@pytest.mark.django_db
def test_static_assets_are_served(client: Client) -> None:
    for path, marker in (
        ("/static/vendor/plotly.min.js", b"plotly.js"),
        ("/static/gateway/live.js", b"connectLive"),
        ("/static/gateway/fleet.js", b"loadPowerHistory"),
        ("/static/gateway/charge_point.js", b'load("hour")'),
        ("/static/gateway/evdash.css", b".tile"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        body = b"".join(response.streaming_content)
        response.close()
        assert marker in body, path
    for path in ("/static/gateway/live.js", "/static/gateway/fleet.js", "/static/gateway/charge_point.js"):
        response = client.get(path)
        body = b"".join(response.streaming_content).decode()
        response.close()
        assert not EXTERNAL_URL.search(body), path


def test_format_age_matches_the_page_wording() -> None:
    assert format_age(None) == "never"
    assert format_age(999) == "0 s ago"
    assert format_age(59_999) == "59 s ago"
    assert format_age(60_000) == "1 min ago"
    assert format_age(7_200_000) == "2 h ago"
    assert format_age(90_000_000) == "1 d ago"


def test_format_extra() -> None:
    assert format_extra(None) == "—"
    assert format_extra(True) == "yes"
    assert format_extra(230.0) == "230"
    assert format_extra(1.5) == "1.5"
    assert format_extra("SN-1") == "SN-1"
    assert format_extra({"a": [1, 2]}) == '{"a":[1,2]}'


# --- In the browser ------------------------------------------------------------------------
# The page scripts against a WebSocket that speaks the documented messages ({"type": "snapshot"}
# then {"type": "telemetry"}); the server side has its own tests in test_live.py.


FAKE_WEBSOCKET = """
window.__sockets = [];
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    window.__sockets.push(this);
    setTimeout(() => this.dispatchEvent(new Event("open")), 0);
  }
  send() {}
  close() { this.dispatchEvent(new CloseEvent("close")); }
};
window.__push = (message) => {
  const socket = window.__sockets[window.__sockets.length - 1];
  socket.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(message) }));
};
"""


# Every Content-Security-Policy violation the page meets, as "directive blocked-uri".
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`);
});
"""

OpenPage = Callable[[str], "Page"]


@pytest.fixture
def open_page(live_server: LiveServer, admin_user: AbstractBaseUser) -> Iterator[OpenPage]:
    """Open a path of the live server in Chromium, logged in, with the fake WebSocket.

    Chromium starts on the first call: Playwright's sync API runs an event loop in this thread,
    so the test creates its objects (sync ORM) before opening the page. At the end, no page may
    have thrown or met a Content-Security-Policy violation (Plotly drawing included).
    """
    from playwright.sync_api import sync_playwright

    client = Client()
    client.force_login(admin_user)
    session = client.cookies["sessionid"].value
    errors: list[str] = []
    pages: list[Page] = []
    with ExitStack() as stack:

        def open_path(path: str) -> "Page":
            playwright = stack.enter_context(sync_playwright())
            browser = launch_chromium(playwright)
            stack.callback(browser.close)
            context = browser.new_context()
            context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
            context.add_init_script(FAKE_WEBSOCKET)
            context.add_init_script(RECORD_CSP_VIOLATIONS)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(live_server.url + path)
            assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
            pages.append(page)
            return page

        yield open_path
        violations = [page.evaluate("window.__cspViolations") for page in pages]
    assert errors == []
    assert violations == [[] for _ in pages]


def live_record(cp: ChargePoint, seq: int, status: str = "charging", **values: float) -> Record:
    return build_record(
        charge_point=cp.slug,
        site=cp.site.slug,
        profile=cp.profile.slug,
        seq=seq,
        fields=TelemetryFields(status=status, iec61851_state="C", values=values, extra={"serial": "SN-9"}),
        # A second apart and a few seconds old: distinct timestamps, none of them stale.
        moment=datetime.now(UTC) - timedelta(seconds=5 - seq),
    )


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_fleet_page_goes_live(open_page: OpenPage, site: Site, generic_profile: DeviceProfile) -> None:
    cp1 = add_charge_point(site, generic_profile, "cp-1")
    cp2 = add_charge_point(site, generic_profile, "cp-2")
    page = open_page("/")
    page.wait_for_selector("[data-live-indicator]")
    # The snapshot may come in chunks (`more` until the last), merged like telemetry.
    page.evaluate(
        "m => window.__push(m)", {"type": "snapshot", "records": [live_record(cp1, 1, power_w=7000.0)], "more": True}
    )
    page.evaluate("m => window.__push(m)", {"type": "snapshot", "records": [], "more": False})
    page.evaluate(
        "m => window.__push(m)",
        {"type": "telemetry", "records": [live_record(cp2, 1, status="faulted", power_w=0.0)]},
    )
    tile = page.locator('.tile[data-charge-point="cp-1"]')
    expect_text = "() => document.querySelector('{}').textContent.trim() === '{}'"
    page.wait_for_function(expect_text.format('.tile[data-charge-point="cp-1"] .tile-power', "7.0 kW"))
    page.wait_for_function(expect_text.format('.tile[data-charge-point="cp-2"] .tile-status', "Faulted"))
    page.wait_for_function(expect_text.format("[data-summary-power]", "7.0 kW"))
    assert "status-charging" in (tile.get_attribute("class") or "")
    assert page.locator("[data-live-indicator]").get_attribute("data-state") == "live"
    # The chart gains one point a second, within its bounded window.
    page.wait_for_function("() => document.getElementById('fleet-power-chart').data[0].x.length >= 2", timeout=5000)
    # A burst of records is buffered: the page draws once a second, not once per message.
    points = page.evaluate("document.getElementById('fleet-power-chart').data[0].x.length")
    burst, older = [live_record(cp1, 5, power_w=9000.0)] * 300, live_record(cp1, 4, power_w=1.0)
    page.evaluate("records => records.forEach(r => window.__push({type: 'telemetry', records: [r]}))", burst)
    page.wait_for_function(expect_text.format("[data-summary-power]", "9.0 kW"))
    # The one-record frame of older servers is still understood; an older record changes nothing.
    page.evaluate("r => window.__push({type: 'telemetry', record: r})", live_record(cp2, 2, power_w=1500.0))
    page.evaluate("r => window.__push({type: 'telemetry', records: [r]})", older)
    page.wait_for_function(expect_text.format("[data-summary-power]", "10.5 kW"))
    assert page.evaluate("document.getElementById('fleet-power-chart').data[0].x.length") <= points + 2
    # A dropped socket shows "reconnecting", then a new socket is opened.
    page.evaluate("window.__sockets[window.__sockets.length - 1].close()")
    assert page.locator("[data-live-indicator]").get_attribute("data-state") == "reconnecting"
    page.wait_for_function("() => window.__sockets.length === 2", timeout=5000)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_fleet_page_of_one_site_subscribes_to_it_and_ignores_other_sites(
    open_page: OpenPage, site: Site, generic_profile: DeviceProfile
) -> None:
    here = add_charge_point(site, generic_profile, "cp-here")
    elsewhere = add_charge_point(Site.objects.create(slug="street", name="Street"), generic_profile, "cp-elsewhere")
    page = open_page(f"/?site={site.slug}")
    page.wait_for_function("() => window.__sockets.length === 1")
    assert page.evaluate("window.__sockets[0].url").endswith(f"/ws/fleet/?site={site.slug}")
    # A server that sends the whole fleet anyway: the page keeps to the charge points it lists.
    frame = {
        "type": "telemetry",
        "records": [live_record(elsewhere, 1, power_w=5000.0), live_record(here, 1, power_w=2000.0)],
    }
    page.evaluate("m => window.__push(m)", frame)
    page.wait_for_function("() => document.querySelector('[data-summary-power]').textContent === '2.0 kW'")
    assert page.locator('[data-charge-point="cp-elsewhere"]').count() == 0
    assert page.locator("[data-fleet-shown]").text_content() == "1 charge point"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_content_security_policy_is_enforced(open_page: OpenPage, site: Site, generic_profile: DeviceProfile) -> None:
    add_charge_point(site, generic_profile, "cp-1")
    page = open_page("/")
    # Plotly drew its chart under the policy (the fixture checks it met no violation doing so).
    page.wait_for_selector("#fleet-power-chart .main-svg", state="attached")
    # Positive control: injected inline script does not run, and the recorder sees the refusal.
    ran = page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.__injected = true";
          document.body.appendChild(script);
          return window.__injected === true;
        }"""
    )
    assert ran is False
    page.wait_for_function("() => window.__cspViolations.length === 1")
    assert page.evaluate("window.__cspViolations") == ["script-src-elem inline"]
    page.evaluate("window.__cspViolations = []")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_admin_pages_work_under_the_policy(open_page: OpenPage, site: Site, generic_profile: DeviceProfile) -> None:
    # The admin's own scripts (inlines, prepopulated slugs, the profile pages) under the same
    # policy: the fixture fails the test on any violation or script error.
    cp = add_charge_point(site, generic_profile, "cp-1")
    page = open_page(f"/admin/gateway/deviceprofile/{generic_profile.pk}/change/")
    page.wait_for_selector("#content-main form")
    page.goto(page.url.split("/admin/")[0] + f"/admin/gateway/chargepoint/{cp.pk}/change/")
    page.wait_for_selector("#content-main form")
    page.goto(page.url.split("/admin/")[0] + "/admin/gateway/site/add/")
    # Prepopulated fields run from admin/js: typing a name fills the slug.
    page.locator("#id_name").press_sequentially("North Depot")
    page.wait_for_function("() => document.getElementById('id_slug').value === 'north-depot'")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_charge_point_page_goes_live(open_page: OpenPage, site: Site, generic_profile: DeviceProfile) -> None:
    cp = add_charge_point(site, generic_profile, "cp-1")
    page = open_page("/chargepoints/cp-1/")
    records = [
        live_record(cp, n, power_w=1000.0 * n, current_l1_a=float(n), current_l2_a=2.0, current_l3_a=3.0)
        for n in range(1, 4)
    ]
    page.evaluate("m => window.__push(m)", {"type": "snapshot", "records": records[:2]})
    # A reconnect's snapshot repeats records: they are plotted once.
    page.evaluate("m => window.__push(m)", {"type": "snapshot", "records": records})
    page.wait_for_function("() => document.querySelector('[data-value=\"power_w\"]').textContent === '3.0'")
    page.wait_for_function("() => document.getElementById('power-chart').data[0].x.length === 3")
    currents = page.evaluate("document.getElementById('current-chart').data.map(t => t.y)")
    assert currents == [[1, 2, 3], [2, 2, 2], [3, 3, 3]]
    assert page.locator(".badge-status").text_content() == "Charging"
    assert "SN-9" in (page.locator(".identity-table").text_content() or "")


@pytest.mark.django_db
def test_register_codes_show_their_meaning(admin_client, site, generic_profile) -> None:
    from gateway.models import Register

    cp = make_charge_point(site, generic_profile, "cp-enum", 1502)
    Register.objects.create(
        profile=generic_profile, name="cable_state", address=200, enum={"3": "cable at station, locked"}
    )
    record = build_record(
        charge_point="cp-enum", site=site.slug, profile=generic_profile.slug, seq=1,
        fields=TelemetryFields("available", "A", {}, extra={"cable_state": 3}),
    )  # fmt: skip
    LatestTelemetry.objects.create(charge_point=cp, record=record, source_ts=parse_ts(record["ts"]))
    page = admin_client.get(reverse("gateway:charge_point", args=["cp-enum"])).content.decode()
    assert "3 (cable at station, locked)" in page
