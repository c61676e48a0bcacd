"""API: sites, profiles, charge points (with the admin's validation and permissions), latest telemetry."""

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from gateway.modbus.poller import Poller
from gateway.models import ApiToken, ChargePoint, DeviceProfile, LatestTelemetry, Site
from gateway.profiles.decode import TelemetryFields
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.telemetry import build_record
from tests.api import bearer, fresh_throttle  # noqa: F401 (fresh_throttle: an autouse fixture)
from tests.conftest import Collected, make_charge_point, wait_for

pytestmark = pytest.mark.django_db
API = "/api/v1/"
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")


def user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="unused-password-1")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="gateway", codename__in=codenames))
    return user


@pytest.fixture
def reader() -> dict[str, str]:
    """An integration's token whose user has no model permission: it reads, it never writes."""
    _, raw = ApiToken.issue(user_with("reader"), "BI export")
    return bearer(raw)


@pytest.fixture
def writer() -> dict[str, str]:
    _, raw = ApiToken.issue(
        user_with("writer", "add_chargepoint", "change_chargepoint", "delete_chargepoint"), "provisioning"
    )
    return bearer(raw)


@pytest.fixture
def fleet(site: Site, generic_profile: DeviceProfile) -> list[ChargePoint]:
    other = Site.objects.create(slug="depot", name="Depot")
    return [
        make_charge_point(site, generic_profile, "cp-a", 1502),
        make_charge_point(site, generic_profile, "cp-b", 1503),
        make_charge_point(other, generic_profile, "cp-c", 1504, enabled=False),
    ]


def store_latest(charge_point: ChargePoint, *, age: timedelta = timedelta(0), power_w: float = 7400.0) -> dict:
    source_ts = timezone.now() - age
    record = build_record(
        charge_point=charge_point.slug,
        site=charge_point.site.slug,
        profile=charge_point.profile.slug,
        seq=1,
        fields=TelemetryFields(status="charging", iec61851_state="C", values={"power_w": power_w}),
        moment=source_ts,
    )
    LatestTelemetry.objects.update_or_create(
        charge_point=charge_point, defaults={"record": record, "source_ts": source_ts}
    )
    return record


def get_json(client: Client, url: str, headers: dict[str, str]) -> Any:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.content
    return response.json()


READ_URLS = [
    "sites/",
    "sites/test-site/",
    "profiles/",
    "profiles/generic-ev-charger/",
    "charge-points/",
    "charge-points/cp-a/",
    "telemetry/latest/",
    "charge-points/cp-a/telemetry/latest/",
]


@pytest.mark.parametrize("url", READ_URLS)
def test_every_read_needs_a_token_or_a_login(client, fleet, reader, url) -> None:
    anonymous = client.get(API + url)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == 'Bearer realm="api"'
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    assert client.get(API + url, headers=reader).status_code == 200
    client.force_login(User.objects.get(username="reader"))  # the browser's session works as well
    assert client.get(API + url).status_code == 200


@pytest.mark.parametrize(
    "url", ["sites/nowhere/", "profiles/nothing/", "charge-points/nope/", "charge-points/nope/telemetry/latest/"]
)
def test_an_unknown_slug_is_a_404_in_the_error_body(client, fleet, reader, url) -> None:
    response = client.get(API + url, headers=reader)
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (404, "not_found") and error["message"]


def test_sites_profiles_and_charge_points_read(client, fleet, reader) -> None:
    sites = get_json(client, API + "sites/", reader)["results"]
    assert sites == [
        {"slug": "depot", "name": "Depot", "address": "", "charge_points": 1},
        {"slug": "test-site", "name": "Test site", "address": "", "charge_points": 2},
    ]
    profiles = get_json(client, API + "profiles/", reader)["results"]
    assert {"slug": "generic-ev-charger", "name": "Generic EV charger"}.items() <= next(
        p for p in profiles if p["slug"] == "generic-ev-charger"
    ).items()
    profile = get_json(client, API + "profiles/generic-ev-charger/", reader)
    assert profile["spec"]["slug"] == "generic-ev-charger"
    assert any(register["role"] == "power_w" for register in profile["spec"]["registers"])
    cp = get_json(client, API + "charge-points/cp-a/", reader)
    assert cp["site"] == "test-site" and cp["profile"] == "generic-ev-charger"
    assert cp["endpoint"] == "127.0.0.1:1502/1" and cp["enabled"] is True
    assert cp["updated_at"].endswith("Z")
    listed = get_json(client, API + "charge-points/?site=depot", reader)["results"]
    assert [c["slug"] for c in listed] == ["cp-c"]
    listed = get_json(client, API + "charge-points/?enabled=true", reader)["results"]
    assert [c["slug"] for c in listed] == ["cp-a", "cp-b"]


def charge_point_body(**overrides: Any) -> dict[str, Any]:
    return {
        "slug": "cp-new",
        "name": "New",
        "site": "test-site",
        "profile": "generic-ev-charger",
        "host": "10.0.0.5",
        "port": 502,
        "unit_id": 1,
        "poll_interval_ms": 1000,
    } | overrides


def send(client: Client, method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
    return getattr(client, method)(
        API + url, data=json.dumps(body) if body is not None else None, content_type="application/json", headers=headers
    )


def test_writes_need_the_model_permissions(client, fleet, reader) -> None:
    assert send(client, "post", "charge-points/", reader, charge_point_body()).status_code == 403
    assert send(client, "patch", "charge-points/cp-a/", reader, {"name": "Renamed"}).status_code == 403
    refused = send(client, "delete", "charge-points/cp-a/", reader)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert ChargePoint.objects.filter(slug="cp-a", name="CP-A").exists()
    # Each write needs its own permission: change alone does not add or delete.
    _, raw = ApiToken.issue(user_with("editor", "change_chargepoint"), "editor")
    assert send(client, "patch", "charge-points/cp-a/", bearer(raw), {"name": "Renamed"}).status_code == 200
    assert send(client, "post", "charge-points/", bearer(raw), charge_point_body()).status_code == 403
    assert send(client, "delete", "charge-points/cp-b/", bearer(raw)).status_code == 403
    assert send(client, "post", "charge-points/", {}, charge_point_body()).status_code == 401


def test_create_change_and_delete_a_charge_point(client, fleet, writer) -> None:
    created = send(client, "post", "charge-points/", writer, charge_point_body())
    assert created.status_code == 201, created.content
    assert created.json()["endpoint"] == "10.0.0.5:502/1"
    assert created.json()["enabled"] is True  # the model's default when the body leaves it out
    assert created.json()["warnings"] == []
    assert ChargePoint.objects.get(slug="cp-new").site.slug == "test-site"

    before = ChargePoint.objects.get(slug="cp-new").updated_at
    changed = send(client, "patch", "charge-points/cp-new/", writer, {"port": 1502, "site": "depot", "enabled": False})
    assert changed.status_code == 200, changed.content
    cp = ChargePoint.objects.get(slug="cp-new")
    assert (cp.port, cp.site.slug, cp.enabled, cp.name) == (1502, "depot", False, "New")  # the rest untouched
    assert cp.updated_at > before  # what the poller's reload looks for

    assert send(client, "put", "charge-points/cp-new/", writer, charge_point_body()).status_code == 405
    assert send(client, "delete", "charge-points/cp-new/", writer).status_code == 204
    assert not ChargePoint.objects.filter(slug="cp-new").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", 70000, "Port must be between 1 and 65535."),
        ("unit_id", 256, "Modbus unit id must be between 0 and 255."),
        ("poll_interval_ms", 10, "Poll interval must be at least 200 ms."),
        ("host", "bad host", "Host must not contain spaces."),
        ("port", 1502, "Another charge point already uses this host, port and unit id."),
        ("slug", "cp-a", "Charge point with this Slug already exists."),
        ("site", "nowhere", "Object with slug=nowhere does not exist."),
    ],
)
def test_a_write_is_refused_with_the_admins_message(client, fleet, writer, field, value, message) -> None:
    body = charge_point_body(**{"host": "127.0.0.1", "port": 2502} | {field: value})
    refused = send(client, "post", "charge-points/", writer, body)
    assert refused.status_code == 400, refused.content
    error = refused.json()["error"]
    assert error["code"] == "invalid"
    assert message in json.dumps(error["fields"]), error
    assert ChargePoint.objects.count() == 3


def test_a_change_is_validated_as_the_whole_charge_point_it_makes(client, fleet, writer) -> None:
    # cp-b alone is fine on port 1502 if it moves host, but not onto cp-a's endpoint.
    refused = send(client, "patch", "charge-points/cp-b/", writer, {"port": 1502})
    assert refused.status_code == 400
    assert "Another charge point already uses this host, port and unit id." in json.dumps(refused.json())
    assert ChargePoint.objects.get(slug="cp-b").port == 1503
    assert send(client, "patch", "charge-points/cp-b/", writer, {"port": 1502, "host": "10.0.0.9"}).status_code == 200


def test_a_write_answers_the_admins_pacing_warning(client, fleet, writer) -> None:
    # A disabled charge point whose poll cannot fit its interval is saved with the admin's warning.
    keba = DeviceProfile.objects.filter(slug="keba-p30").first()
    if keba is None:
        from tests.conftest import shipped_profile

        keba = shipped_profile("keba-p30")
    body = charge_point_body(profile=keba.slug, poll_interval_ms=200, enabled=False)
    created = send(client, "post", "charge-points/", writer, body)
    assert created.status_code == 201, created.content
    assert any("enabling it will be refused" in warning for warning in created.json()["warnings"])
    refused = send(client, "patch", "charge-points/cp-new/", writer, {"enabled": True})
    assert refused.status_code == 400
    assert "poll_interval_ms" in refused.json()["error"]["fields"]


def test_fleet_latest_telemetry_says_what_is_stale(client, fleet, reader) -> None:
    cp_a, cp_b, _ = fleet
    record = store_latest(cp_a)
    store_latest(cp_b, age=timedelta(minutes=5))  # 3 × 250 ms polls, at least 10 s: long stale
    items = get_json(client, API + "telemetry/latest/", reader)["results"]
    by_slug = {item["charge_point"]: item for item in items}
    assert list(by_slug) == ["cp-a", "cp-b", "cp-c"]
    assert by_slug["cp-a"]["record"] == record
    assert by_slug["cp-a"]["stale"] is False and by_slug["cp-a"]["status"] == "charging"
    assert by_slug["cp-a"]["stale_after_ms"] == 10_000
    assert by_slug["cp-a"]["source_ts"] == record["ts"]
    assert by_slug["cp-b"]["stale"] is True and by_slug["cp-b"]["summary_status"] == "stale"
    assert by_slug["cp-c"]["record"] is None and by_slug["cp-c"]["source_ts"] is None
    assert by_slug["cp-c"]["status"] == "nodata" and by_slug["cp-c"]["stale"] is False
    assert by_slug["cp-c"]["enabled"] is False

    of_site = get_json(client, API + "telemetry/latest/?site=depot", reader)["results"]
    assert [item["charge_point"] for item in of_site] == ["cp-c"]
    one = get_json(client, API + "charge-points/cp-b/telemetry/latest/", reader)
    assert one == by_slug["cp-b"]


def test_pages_have_no_duplicates_or_gaps_while_charge_points_are_added(client, site, generic_profile, reader) -> None:
    for n in range(10):
        make_charge_point(site, generic_profile, f"cp-{n:02d}", 2000 + n)
    for url, key, port in (("charge-points/", "slug", 3000), ("telemetry/latest/", "charge_point", 3100)):
        seen: list[str] = []
        page = get_json(client, API + url + "?limit=3", reader)
        while True:
            seen += [item[key] for item in page["results"]]
            if len(seen) == 3:
                # Added behind the cursor (never seen) and ahead of it (seen once, in its place).
                make_charge_point(site, generic_profile, f"cp-00a-{port}", port)
                make_charge_point(site, generic_profile, f"cp-07a-{port}", port + 1)
            if not page["next"]:
                break
            page = get_json(client, page["next"], reader)
        expected = sorted(ChargePoint.objects.values_list("slug", flat=True))
        expected.remove(f"cp-00a-{port}")
        assert seen == expected, (url, seen)


def test_limit_is_capped_and_pages_link_both_ways(client, site, generic_profile, reader) -> None:
    for n in range(5):
        make_charge_point(site, generic_profile, f"cp-{n}", 2000 + n)
    first = get_json(client, API + "charge-points/?limit=2", reader)
    second = get_json(client, first["next"], reader)
    assert [c["slug"] for c in second["results"]] == ["cp-2", "cp-3"]
    back = get_json(client, second["previous"], reader)
    assert back["results"] == first["results"]
    assert len(get_json(client, API + "charge-points/?limit=100000", reader)["results"]) == 5


@pytest.mark.parametrize("url", ["telemetry/latest/", "charge-points/cp-a/telemetry/latest/", "sites/"])
def test_an_unchanged_read_is_a_304(client, fleet, reader, url) -> None:
    store_latest(fleet[0])
    first = client.get(API + url, headers=reader)
    etag = first["ETag"]
    again = client.get(API + url, headers=reader | {"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again["ETag"] == etag
    # A new record (or site) is a new body, a new tag.
    store_latest(fleet[0], power_w=1234.0)
    Site.objects.create(slug="new-site", name="New")
    changed = client.get(API + url, headers=reader | {"If-None-Match": etag})
    assert changed.status_code == 200 and changed["ETag"] != etag


def test_latest_telemetry_reads_a_page_in_a_fixed_number_of_queries(
    client, site, generic_profile, reader, django_assert_max_num_queries
) -> None:
    for n in range(30):
        store_latest(make_charge_point(site, generic_profile, f"cp-{n:02d}", 2000 + n))
    # Authentication (token, user) and the page itself; nothing per charge point.
    with django_assert_max_num_queries(4):
        assert len(get_json(client, API + "telemetry/latest/", reader)["results"]) == 30


@pytest.mark.django_db(transaction=True)
async def test_a_running_poller_follows_a_charge_point_moved_through_the_api(site, generic_profile, settings) -> None:
    settings.EVDASH = settings.EVDASH | {"RELOAD_INTERVAL_S": 0.5, "MODBUS_TIMEOUT_S": 1.0}
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=3) as chargers:
        first, second = chargers.charge_points
        for sim, power_w in ((first, 1111), (second, 2222)):
            sim.set_status("charging")
            sim.set_value("power_w", power_w)
        await sync_to_async(make_charge_point)(site, generic_profile, "cp", first.port)
        writer = await sync_to_async(lambda: ApiToken.issue(user_with("writer", "change_chargepoint"), "x")[1])()
        collected, stop = Collected(), asyncio.Event()
        task = asyncio.create_task(Poller(collected).run(stop))
        try:
            await wait_for(lambda: len(collected.of("cp")) >= 2, what="cp polled at its first port")
            moved = await sync_to_async(send)(
                Client(), "patch", "charge-points/cp/", bearer(writer), {"port": second.port}
            )
            assert moved.status_code == 200, moved.content
            await wait_for(lambda: collected.of("cp")[-1]["values"]["power_w"] == 2222, what="cp read at its new port")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
