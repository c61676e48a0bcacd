"""The commands API: sending needs a token (or a CSRF-checked session) and gateway.send_command;
refusals are 400s with the service's reason and are audited; a command sent through the API is
applied on a simulated charger (the simulator, run_poller and run_consumer for real, in this event
loop, with the embedded Kafka) and polled to its result; the audit's filters and cursor pages."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from gateway.choices import CommandStatus
from gateway.commands.service import command_json
from gateway.models import ApiToken, ChargePoint, Command
from tests.conftest import free_port, make_charge_point
from tests.test_commands_end_to_end import RESULT_TIMEOUT_S, charging_fleet, running_chain, supporting

LIST_URL = "/api/v1/commands/"
LIMIT_A = 10.0


def send_url(slug: str = "cp-1") -> str:
    return f"/api/v1/charge-points/{slug}/commands/"


def detail_url(command_id: object) -> str:
    return f"/api/v1/commands/{command_id}/"


def token_client(name: str, *, may_send: bool) -> APIClient:
    user = get_user_model().objects.create_user(name, password="pw-commands-1")
    if may_send:
        user.user_permissions.add(Permission.objects.get(codename="send_command"))
    _, raw = ApiToken.issue(user, f"{name}-csms")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def cp(site, generic_profile) -> ChargePoint:
    return make_charge_point(site, generic_profile, "cp-1", 1502)


def make_command(slug: str, minutes: float, **fields: object) -> Command:
    created = datetime(2026, 1, 5, 8, 0, tzinfo=UTC) + timedelta(minutes=minutes)
    defaults = {
        "charge_point_slug": slug,
        "site_slug": "test-site",
        "action": "set_current_limit",
        "value": 16.0,
        "username": "someone",
        "via": "web",
        "created_at": created,
        "expires_at": created + timedelta(seconds=30),
        "status": CommandStatus.APPLIED,
    }
    return Command.objects.create(**(defaults | fields))


# --- Who may send ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_sending_needs_a_token_or_a_login_and_the_permission(cp: ChargePoint) -> None:
    body = {"action": "set_current_limit", "value": LIMIT_A}
    anonymous = APIClient().post(send_url(), body, format="json")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"
    viewer = token_client("viewer", may_send=False)
    refused = viewer.post(send_url(), body, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_permitted"
    # Refused before anything else, as on the page: no command, whatever the charge point.
    assert viewer.post(send_url("cp-nowhere"), body, format="json").status_code == 403
    assert not Command.objects.exists()
    # Reading the audit needs a login only (the charge point page shows everyone its commands).
    assert viewer.get(LIST_URL).status_code == 200
    for url in (LIST_URL, detail_url(uuid.uuid4())):
        assert APIClient().get(url).status_code == 401


@pytest.mark.django_db
def test_a_browser_session_sends_only_with_its_csrf_token(cp: ChargePoint) -> None:
    user = get_user_model().objects.create_user("operator", password="pw-commands-2")
    user.user_permissions.add(Permission.objects.get(codename="send_command"))
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    refused = browser.post(send_url(), {"action": "pause"}, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    assert not Command.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"action": "set_current_limit", "value": 99}, "out_of_range", "99 A is outside 6..32 A"),
        ({"action": "set_current_limit"}, "invalid", "needs a value"),
        ({"action": "pause", "value": 10}, "invalid", "pause takes no value"),
        ({"action": "self_destruct"}, "invalid", "unknown action 'self_destruct'"),
        ({"action": "set_failsafe_timeout", "value": 30}, "invalid", "set_failsafe_timeout is not an operator command"),
    ],
)
def test_a_refusal_is_a_400_with_the_reason_and_is_audited(cp: ChargePoint, body: dict, code: str, words: str) -> None:
    response = token_client("operator", may_send=True).post(send_url(), body, format="json")
    assert response.status_code == 400, response.content
    answer = response.json()
    assert answer["error"]["status"] == 400 and answer["error"]["code"] == code and words in answer["error"]["message"]
    (row,) = Command.objects.all()
    assert (row.status, row.reason_code, row.via, row.username) == ("failed", code, "api", "operator")
    assert answer["command"]["id"] == str(row.id) and answer["command"]["status"] == "failed"


@pytest.mark.django_db
def test_a_disabled_charge_point_is_refused_and_an_unknown_one_is_a_404(cp: ChargePoint) -> None:
    api = token_client("operator", may_send=True)
    ChargePoint.objects.filter(pk=cp.pk).update(enabled=False)
    response = api.post(send_url(), {"action": "pause"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "offline"
    missing = api.post(send_url("cp-nowhere"), {"action": "pause"}, format="json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_a_malformed_request_is_a_400_naming_the_field(cp: ChargePoint) -> None:
    api = token_client("operator", may_send=True)
    response = api.post(send_url(), {"action": "set_current_limit", "value": "ten"}, format="json")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["value"]
    assert list(api.post(send_url(), {}, format="json").json()["error"]["fields"]) == ["action"]
    assert not Command.objects.exists()


@pytest.mark.django_db
def test_kafka_not_taking_the_command_is_a_503_and_audited(cp: ChargePoint, kafka, monkeypatch) -> None:
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    response = token_client("operator", may_send=True).post(
        send_url(), {"action": "set_current_limit", "value": LIMIT_A}, format="json"
    )
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "timeout"
    (row,) = Command.objects.all()
    assert row.status == "failed" and row.via == "api" and response.json()["command"]["id"] == str(row.id)


# --- Applied on a simulated charger --------------------------------------------------------------


async def poll_result(api: APIClient, command_id: str, timeout_s: float) -> dict:
    """GET the command until it is no longer pending, as an integration polls it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await sync_to_async(api.get)(detail_url(command_id))
        assert response.status_code == 200, response.content
        if response.json()["status"] != "pending":
            return response.json()
        assert asyncio.get_running_loop().time() < deadline, f"still pending after {timeout_s} s"
        await asyncio.sleep(0.1)


@pytest.mark.django_db(transaction=True)
async def test_a_command_sent_through_the_api_is_applied_on_a_simulated_charger(
    kafka, site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generic = next(spec for spec in supporting("set_current_limit") if spec.slug == "generic-ev-charger")
    api = await sync_to_async(token_client)("csms", may_send=True)
    fleet, (charge_point,) = await charging_fleet([generic], site)
    simulator = fleet.charge_points[0]
    try:
        async with running_chain("direct", tmp_path, monkeypatch):
            await wait_charging(charge_point)
            response = await sync_to_async(api.post)(
                send_url(charge_point.slug), {"action": "set_current_limit", "value": LIMIT_A}, format="json"
            )
            assert response.status_code == 201, response.content
            sent = response.json()
            assert sent["status"] == "pending" and sent["via"] == "api" and sent["username"] == "csms"
            assert response["Location"] == detail_url(sent["id"])
            result = await poll_result(api, sent["id"], RESULT_TIMEOUT_S)
            audit = await sync_to_async(api.get)(LIST_URL, {"charge_point": charge_point.slug, "status": "applied"})
    finally:
        await fleet.stop()
    assert result["status"] == "applied", result
    assert result["read_back"] == pytest.approx(LIMIT_A, abs=0.05)
    assert result["latency_ms"] > 0 and result["completed_at"] is not None
    # The simulated car draws at most the limit now: the charger honoured the write.
    assert max(simulator.behaviour.currents_a) <= LIMIT_A + 1e-6, simulator.behaviour.currents_a
    row = await Command.objects.aget(id=sent["id"])
    assert result == command_json(row) | {"site": site.slug, "via": "api"}
    assert [c["id"] for c in audit.json()["results"]] == [sent["id"]]


async def wait_charging(charge_point: ChargePoint) -> None:
    """The poller polls the charger and the consumer stored a charging record."""
    from gateway.models import LatestTelemetry

    deadline = asyncio.get_running_loop().time() + RESULT_TIMEOUT_S
    while True:
        row = await LatestTelemetry.objects.filter(charge_point=charge_point).afirst()
        if row is not None and row.record["status"] == "charging":
            return
        assert asyncio.get_running_loop().time() < deadline, "no charging record"
        await asyncio.sleep(0.2)


# --- The audit -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_audit_filters_by_charge_point_site_and_status() -> None:
    applied = make_command("cp-1", 1)
    failed = make_command("cp-1", 2, status="failed", reason_code="offline", via="api")
    other = make_command("cp-2", 3, site_slug="harbour", action="pause", value=None)
    api = token_client("auditor", may_send=False)

    def listed(**query: str) -> list[str]:
        response = api.get(LIST_URL, query)
        assert response.status_code == 200, response.content
        return [command["id"] for command in response.json()["results"]]

    assert listed() == [str(other.id), str(failed.id), str(applied.id)]  # newest first
    assert listed(charge_point="cp-1") == [str(failed.id), str(applied.id)]
    assert listed(site="harbour") == [str(other.id)]
    assert listed(status="failed") == [str(failed.id)]
    assert listed(action="pause") == [str(other.id)] and listed(via="api") == [str(failed.id)]
    bad = api.get(LIST_URL, {"status": "exploded"})
    assert bad.status_code == 400 and list(bad.json()["error"]["fields"]) == ["status"]
    one = api.get(detail_url(failed.id))
    assert one.json() == command_json(failed) | {"site": "test-site", "via": "api"}
    assert api.get(detail_url(failed.id), HTTP_IF_NONE_MATCH=one["ETag"]).status_code == 304
    missing = api.get(detail_url(uuid.uuid4()))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_the_audit_pages_neither_repeat_nor_skip_while_commands_are_sent() -> None:
    for i in range(23):
        make_command("cp-1", i // 2)
    api = token_client("auditor", may_send=False)
    expected = [str(pk) for pk in Command.objects.order_by("-created_at", "-id").values_list("id", flat=True)]
    seen: list[str] = []
    response = api.get(LIST_URL, {"limit": "10"})
    while True:
        seen += [command["id"] for command in response.json()["results"]]
        if len(seen) == 10:
            make_command("cp-1", 120)
            older = make_command("cp-1", -120)
        if not response.json()["next"]:
            break
        response = api.get(response.json()["next"])
    assert seen == [*expected, str(older.id)]


@pytest.mark.django_db
def test_the_page_and_the_api_send_through_the_same_service(cp: ChargePoint) -> None:
    """A refusal from the page and from the API: the same reason, audited alike but for `via`."""
    user = get_user_model().objects.create_user("both", password="pw-commands-3")
    user.user_permissions.add(Permission.objects.get(codename="send_command"))
    page = Client()
    page.force_login(user)
    page.post(f"/chargepoints/{cp.slug}/commands/", {"action": "set_current_limit", "value": "40"})
    _, raw = ApiToken.issue(user, "both")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    api.post(send_url(), {"action": "set_current_limit", "value": 40}, format="json")
    web, via_api = Command.objects.order_by("created_at")
    assert (web.via, via_api.via) == ("web", "api")
    assert (web.reason_code, web.reason) == (via_api.reason_code, via_api.reason)


@pytest.mark.django_db
def test_the_schema_declares_the_shape_sent() -> None:
    """The OpenAPI schema's Command lists exactly the fields the API sends."""
    from gateway.api.domain_serializers import CommandSerializer

    command = make_command("cp-1", 0)
    assert set(CommandSerializer().fields) == set(CommandSerializer(command).data)
