"""Dashboard pages: login required, server-rendered first paint, air-gapped assets."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse

from gateway.models import ChargePoint, DeviceProfile, LatestTelemetry, Site
from gateway.profiles.decode import TelemetryFields
from gateway.telemetry import Record, build_record, parse_ts
from gateway.views import format_age, format_extra

EXTERNAL_URL = re.compile(r"https?://", re.IGNORECASE)


@pytest.fixture
def site() -> Site:
    return Site.objects.create(slug="depot", name="Depot")


@pytest.fixture
def profile() -> DeviceProfile:
    return DeviceProfile.objects.get(slug="generic-ev-charger")


def make_charge_point(site: Site, profile: DeviceProfile, slug: str, **fields: object) -> ChargePoint:
    port = 5020 + ChargePoint.objects.count()
    return ChargePoint.objects.create(
        slug=slug, name=slug.upper(), site=site, host="127.0.0.1", port=port, profile=profile, **fields
    )


def store_record(cp: ChargePoint, *, age: timedelta = timedelta(0), **values: float) -> Record:
    """Store a charging record of `cp` as its latest telemetry, `age` old."""
    record = build_record(
        charge_point=cp.slug,
        site=cp.site.slug,
        profile=cp.profile.slug,
        seq=1,
        fields=TelemetryFields(
            status="charging", iec61851_state="C", values=values, extra={"serial": "SN-1"}
        ),
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


@pytest.mark.django_db
def test_login_page_renders(client: Client) -> None:
    response = client.get(reverse("login"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="username"' in html and 'name="password"' in html
    assert not EXTERNAL_URL.search(html)


@pytest.mark.django_db
def test_fleet_lists_enabled_charge_points_only(admin_client: Client, site: Site, profile: DeviceProfile) -> None:
    make_charge_point(site, profile, "cp-on")
    make_charge_point(site, profile, "cp-off", enabled=False)
    response = admin_client.get(reverse("gateway:fleet"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-charge-point="cp-on"' in html
    assert "cp-off" not in html
    assert reverse("gateway:charge_point", args=["cp-on"]) in tile_html(html, "cp-on")


@pytest.mark.django_db
def test_fleet_tile_shows_latest_record(admin_client: Client, site: Site, profile: DeviceProfile) -> None:
    cp = make_charge_point(site, profile, "cp-1")
    store_record(cp, power_w=7360.0, session_energy_wh=12_345.0)
    make_charge_point(site, profile, "cp-2")
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    tile = tile_html(html, "cp-1")
    assert "status-charging" in tile and "is-stale" not in tile
    assert re.search(r'class="tile-status">Charging<', tile)
    assert re.search(r'class="tile-power">7\.4 kW<', tile)
    assert re.search(r'class="tile-energy">12\.35 kWh<', tile)
    assert "status-nodata" in tile_html(html, "cp-2")
    assert re.search(r'data-summary-power>7\.4 kW<', html)
    assert re.search(r'data-summary-status="charging">.*?summary-count">1<', html, re.S)


@pytest.mark.django_db
def test_fleet_marks_old_records_stale(admin_client: Client, site: Site, profile: DeviceProfile) -> None:
    # 3 × 1 s poll interval is below the 10 s floor: 9 s old is fresh, 11 s old is stale.
    fresh = make_charge_point(site, profile, "cp-fresh")
    stale = make_charge_point(site, profile, "cp-stale")
    slow = make_charge_point(site, profile, "cp-slow", poll_interval_ms=5000)
    store_record(fresh, age=timedelta(seconds=9), power_w=1000.0)
    store_record(stale, age=timedelta(seconds=11), power_w=2000.0)
    store_record(slow, age=timedelta(seconds=14), power_w=4000.0)
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    assert "is-stale" not in tile_html(html, "cp-fresh")
    assert "is-stale" in tile_html(html, "cp-stale")
    assert "is-stale" not in tile_html(html, "cp-slow")
    # A stale charge point's power is unknown: it leaves the fleet total.
    assert re.search(r'data-summary-power>5\.0 kW<', html)


@pytest.mark.django_db
def test_fleet_site_filter(admin_client: Client, site: Site, profile: DeviceProfile) -> None:
    other = Site.objects.create(slug="street", name="Street")
    make_charge_point(site, profile, "cp-depot")
    make_charge_point(other, profile, "cp-street")
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    assert 'name="site"' in html
    html = admin_client.get(reverse("gateway:fleet"), {"site": "street"}).content.decode()
    assert 'data-charge-point="cp-street"' in html
    assert 'data-charge-point="cp-depot"' not in html
    assert admin_client.get(reverse("gateway:fleet"), {"site": "nowhere"}).status_code == 404


@pytest.mark.django_db
def test_charge_point_page(admin_client: Client, site: Site, profile: DeviceProfile) -> None:
    cp = make_charge_point(site, profile, "cp-1", port=1502, unit_id=3)
    store_record(cp, power_w=11_000.0, energy_total_wh=1_234_567.0, temperature_c=41.5)
    response = admin_client.get(reverse("gateway:charge_point", args=["cp-1"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "127.0.0.1:1502/3" in html
    assert profile.name in html and "Depot" in html
    assert re.search(r'data-value="power_w">11\.0<', html)
    assert re.search(r'data-value="energy_total_wh">1234\.6<', html)
    assert re.search(r'data-value="temperature_c">41\.5<', html)
    assert re.search(r'data-value="max_current_a">—<', html)
    assert "C: charging" in html
    assert "SN-1" in html
    assert 'id="power-chart"' in html and 'id="current-chart"' in html
    assert 'id="page-config"' in html


@pytest.mark.django_db
def test_charge_point_page_404_for_unknown_slug(admin_client: Client) -> None:
    response = admin_client.get(reverse("gateway:charge_point", args=["no-such-cp"]))
    assert response.status_code == 404


@pytest.mark.django_db
def test_initial_data_is_escaped(admin_client: Client, site: Site, profile: DeviceProfile) -> None:
    cp = make_charge_point(site, profile, "cp-1", name="</script><script>alert(1)</script>")
    record = store_record(cp, power_w=1.0)
    record["extra"] = {"note": "</script><b>x</b>"}
    LatestTelemetry.objects.filter(charge_point=cp).update(record=record)
    for url in (reverse("gateway:fleet"), reverse("gateway:charge_point", args=["cp-1"])):
        html = admin_client.get(url).content.decode()
        assert "<script>alert(1)" not in html
        assert "<b>x</b>" not in html


@pytest.mark.django_db
def test_pages_use_local_plotly_and_no_external_url(
    admin_client: Client, site: Site, profile: DeviceProfile
) -> None:
    cp = make_charge_point(site, profile, "cp-1")
    store_record(cp, power_w=3000.0)
    for url in (reverse("gateway:fleet"), reverse("gateway:charge_point", args=["cp-1"])):
        html = admin_client.get(url).content.decode()
        assert '<script defer src="/static/vendor/plotly.min.js"></script>' in html
        assert not EXTERNAL_URL.search(html), EXTERNAL_URL.search(html)
        # No inline script: data travels in json_script blocks only.
        inline = re.findall(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html)
        assert inline == []


@pytest.mark.django_db
def test_nav_links(admin_client: Client, client: Client, django_user_model: type) -> None:
    html = admin_client.get(reverse("gateway:fleet")).content.decode()
    assert reverse("admin:index") in html
    assert re.search(rf'<form[^>]*method="post"[^>]*action="{reverse("logout")}"', html)
    user = django_user_model.objects.create_user(username="operator", password="x-long-password-1")
    client.force_login(user)
    html = client.get(reverse("gateway:fleet")).content.decode()
    assert reverse("admin:index") not in html


@pytest.mark.django_db
def test_static_assets_are_served(client: Client) -> None:
    for path, marker in (
        ("/static/vendor/plotly.min.js", b"plotly.js"),
        ("/static/gateway/live.js", b"connectLive"),
        ("/static/gateway/fleet.js", b"extendTraces"),
        ("/static/gateway/charge_point.js", b"extendTraces"),
        ("/static/gateway/evdash.css", b".tile"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        body = b"".join(response.streaming_content)
        response.close()
        assert marker in body[:200_000] or marker in body, path
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
