"""The web entry point of commands: POST /chargepoints/<slug>/commands/ (login, CSRF, permission,
the profile's range), GET /commands/<id>/, and the Commands panel of the charge point page."""

import json
import logging
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from gateway.choices import CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage
from gateway.commands.service import command_json
from gateway.kafka.topics import commands_topic
from gateway.models import ChargePoint, Command, DeviceProfile, LatestTelemetry, Site
from gateway.profiles.spec import CommandSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.telemetry import build_record, parse_ts
from tests.conftest import make_charge_point, stored_profile
from tests.kafka_read import read_all

pytestmark = pytest.mark.django_db
PASSWORD = "pw-commands-4821"
# The test profile's range differs from its register's write range (6-32 A): the page shows the command's.
LIMIT_MIN_A, LIMIT_MAX_A = 6, 16
RESUME_UNSUPPORTED = "this test charger has no resume"


def commands_profile() -> DeviceProfile:
    """The generic profile with commands: a limit of 6-16 A, pause (limit 0), resume unsupported."""
    spec = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
    commands = (
        CommandSpec("set_current_limit", register="max_current", min_value=LIMIT_MIN_A, max_value=LIMIT_MAX_A),
        CommandSpec("pause", register="max_current", value=0),
        CommandSpec("resume", unsupported=RESUME_UNSUPPORTED),
    )
    return stored_profile(replace(spec, slug="test-commands", name="Test commands", commands=commands))


@pytest.fixture
def cp(site: Site) -> ChargePoint:
    return make_charge_point(site, commands_profile(), "cp-1", 1502)


def user_client(name: str, *, permitted: bool, enforce_csrf: bool = False) -> tuple[Client, object]:
    user = get_user_model().objects.create_user(name, password=PASSWORD)
    if permitted:
        user.user_permissions.add(Permission.objects.get(codename="send_command"))
    client = Client(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client, user


def send_url(slug: str = "cp-1") -> str:
    return reverse("gateway:send_command", args=[slug])


def test_urls() -> None:
    assert send_url() == "/chargepoints/cp-1/commands/"
    command_id = uuid.uuid4()
    assert reverse("gateway:command", args=[command_id]) == f"/commands/{command_id}/"


def test_anonymous_is_sent_to_the_login_and_nothing_is_stored(client: Client, cp: ChargePoint) -> None:
    response = client.post(send_url(), {"action": "pause"})
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={send_url()}"
    response = client.get(reverse("gateway:command", args=[uuid.uuid4()]))
    assert response.status_code == 302
    assert not Command.objects.exists()


def test_only_post_sends(cp: ChargePoint) -> None:
    client, _ = user_client("operator", permitted=True)
    for method in ("get", "put", "delete", "patch"):
        response = getattr(client, method)(send_url())
        assert response.status_code == 405, method
    assert not Command.objects.exists()


@pytest.mark.parametrize(
    "form",
    [
        {"action": "set_current_limit", "value": "10"},
        {"action": "pause"},
        {"action": "set_current_limit", "value": "1e9"},
        {"action": "<script>alert(1)</script>", "value": "x"},
        {},
    ],
    ids=["limit", "pause", "out-of-range", "forged", "empty"],
)
def test_without_the_permission_nothing_is_sent_whatever_the_form(cp: ChargePoint, caplog, form: dict) -> None:
    client, _ = user_client("viewer", permitted=False)
    caplog.set_level(logging.INFO)
    response = client.post(send_url(), form)
    assert response.status_code == 403
    assert response.json()["error"] == "you do not have the permission to send commands"
    assert response.json()["reason_code"] == FailureReason.NOT_PERMITTED
    assert not Command.objects.exists()  # the service was never reached
    # The refusal is logged as a warning naming the user, the charge point and the action sent.
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "gateway.views"]
    assert "viewer" in warning.getMessage() and "'cp-1'" in warning.getMessage()
    assert repr(form.get("action", "")) in warning.getMessage()


def test_without_the_permission_an_unknown_charge_point_is_refused_alike(site: Site) -> None:
    # 403, not 404: a user who may not send learns nothing about which charge points exist.
    client, _ = user_client("viewer", permitted=False)
    assert client.post(send_url("nope"), {"action": "pause"}).status_code == 403


def test_csrf_is_enforced(cp: ChargePoint, kafka: dict) -> None:
    client, _ = user_client("operator", permitted=True, enforce_csrf=True)
    response = client.post(send_url(), {"action": "set_current_limit", "value": "10"})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert not Command.objects.exists()
    # With the token of the page (as charge_point.js sends it: the X-CSRFToken header), it goes.
    page = client.get(reverse("gateway:charge_point", args=["cp-1"]))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    response = client.post(send_url(), {"action": "set_current_limit", "value": "10"}, headers={"X-CSRFToken": token})
    assert response.status_code == 201, response.content
    assert Command.objects.count() == 1


def test_a_permitted_user_sends_a_limit_to_kafka(cp: ChargePoint, kafka: dict) -> None:
    client, user = user_client("operator", permitted=True)
    before = datetime.now(UTC)
    response = client.post(send_url(), {"action": "set_current_limit", "value": "10"})
    assert response.status_code == 201, response.content
    body = response.json()
    [row] = Command.objects.all()
    assert body == {"command": command_json(row)}
    command = body["command"]
    assert command["status"] == CommandStatus.PENDING and command["action"] == "set_current_limit"
    assert command["value"] == 10.0 and command["charge_point"] == "cp-1" and command["username"] == "operator"
    assert (row.user, row.via, row.site_slug) == (user, "web", "test-site")
    assert parse_ts(command["expires_at"]) - parse_ts(command["created_at"]) == timedelta(seconds=30)
    assert parse_ts(command["created_at"]) >= before.replace(microsecond=before.microsecond // 1000 * 1000)
    # The command is on Kafka, keyed by charge point, for the poller.
    [message] = async_to_sync(read_all)(commands_topic())
    assert message.key == b"cp-1"
    sent = CommandMessage.from_json(message.value)
    assert (sent.id, sent.action, sent.value, sent.user, sent.site) == (
        command["id"],
        "set_current_limit",
        10.0,
        "operator",
        "test-site",
    )


def test_pause_takes_no_value(cp: ChargePoint, kafka: dict) -> None:
    client, _ = user_client("operator", permitted=True)
    response = client.post(send_url(), {"action": "pause", "value": ""})
    assert response.status_code == 201, response.content
    assert response.json()["command"]["value"] is None


@pytest.mark.parametrize(
    ("form", "reason_code", "reason"),
    [
        ({"action": "set_current_limit", "value": "17"}, FailureReason.OUT_OF_RANGE, "17 A is outside 6..16 A"),
        ({"action": "set_current_limit", "value": "5.5"}, FailureReason.OUT_OF_RANGE, "5.5 A is outside 6..16 A"),
        ({"action": "resume"}, FailureReason.UNSUPPORTED, RESUME_UNSUPPORTED),
        ({"action": "set_current_limit"}, FailureReason.INVALID, "needs a value"),
        (
            {"action": "reboot"},
            FailureReason.INVALID,
            "unknown action 'reboot' (one of set_current_limit, pause, resume)",
        ),
        # Site load management's set-up, not a button: refused even where the profile has it.
        (
            {"action": "set_failsafe_current", "value": "10"},
            FailureReason.INVALID,
            "set_failsafe_current is not an operator command",
        ),
    ],
    ids=["over", "under", "unsupported", "no-value", "unknown-action", "failsafe-action"],
)
def test_refusals_are_400_with_the_reason_and_the_audit_row(
    cp: ChargePoint, kafka: dict, form: dict, reason_code: str, reason: str
) -> None:
    client, _ = user_client("operator", permitted=True)
    response = client.post(send_url(), form)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["reason_code"] == reason_code and reason in body["error"]
    [row] = Command.objects.all()
    assert body["command"] == command_json(row)
    assert (row.status, row.reason_code) == (CommandStatus.FAILED, reason_code)


@pytest.mark.parametrize("value", ["ten", "nan", "inf", "1e999"])
def test_a_value_that_is_not_a_number_is_refused_before_the_service(cp: ChargePoint, value: str) -> None:
    client, _ = user_client("operator", permitted=True)
    response = client.post(send_url(), {"action": "set_current_limit", "value": value})
    assert response.status_code == 400
    assert response.json() == {"error": f"value: {value!r} is not a number", "reason_code": "invalid", "command": None}
    assert not Command.objects.exists()


def test_unknown_charge_point_is_404_for_a_permitted_user(site: Site) -> None:
    client, _ = user_client("operator", permitted=True)
    assert client.post(send_url("nope"), {"action": "pause"}).status_code == 404


def stored_command(cp: ChargePoint, **fields: object) -> Command:
    now = datetime.now(UTC)
    defaults = {
        "charge_point": cp,
        "charge_point_slug": cp.slug,
        "site_slug": cp.site.slug,
        "action": "set_current_limit",
        "value": 10.0,
        "username": "operator",
        "via": "web",
        "created_at": now,
        "expires_at": now + timedelta(seconds=30),
    }
    return Command.objects.create(**(defaults | fields))


def test_any_logged_in_user_can_read_a_command(cp: ChargePoint) -> None:
    row = stored_command(cp, status=CommandStatus.APPLIED, read_back=10.0)
    client, _ = user_client("viewer", permitted=False)
    response = client.get(reverse("gateway:command", args=[row.id]))
    assert response.status_code == 200
    assert response.json() == {"command": command_json(row)}
    assert client.get(reverse("gateway:command", args=[uuid.uuid4()])).status_code == 404
    assert client.post(reverse("gateway:command", args=[row.id])).status_code == 405


def page_html(client: Client, slug: str = "cp-1") -> str:
    response = client.get(reverse("gateway:charge_point", args=[slug]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_controls_are_only_in_the_page_of_a_permitted_user(cp: ChargePoint) -> None:
    viewer, _ = user_client("viewer", permitted=False)
    html = page_html(viewer)
    assert "data-commands" not in html and 'name="action"' not in html and send_url() not in html
    assert "Recent commands" in html  # the audit of this charge point is for everyone to read
    config = json.loads(re.search(r'id="page-config" type="application/json">(.*?)</script>', html).group(1))
    assert config["commands"]["send_url"] is None

    operator, _ = user_client("operator", permitted=True)
    html = page_html(operator)
    assert "data-commands" in html
    # The limit input is bounded by the profile's command range, in whole amperes.
    [limit_input] = re.findall(r'<input id="command-limit-value"[^>]*>', html, re.S)
    assert f'min="{LIMIT_MIN_A}"' in limit_input and f'max="{LIMIT_MAX_A}"' in limit_input
    assert 'step="1"' in limit_input and "required" in limit_input and "disabled" not in limit_input
    buttons = dict(re.findall(r'<button type="submit" class="command-button" data-action="(\w+)"([^>]*)>', html))
    assert sorted(buttons) == ["pause", "resume", "set_current_limit"]
    assert "disabled" not in buttons["set_current_limit"] and "disabled" not in buttons["pause"]
    # resume is unsupported by the profile: shown, disabled, with the profile's reason.
    assert "disabled" in buttons["resume"] and RESUME_UNSUPPORTED in buttons["resume"]
    assert f'data-unsupported="resume">unsupported: {RESUME_UNSUPPORTED}<' in html
    config = json.loads(re.search(r'id="page-config" type="application/json">(.*?)</script>', html).group(1))
    assert config["commands"]["send_url"] == send_url()


def test_the_page_lists_the_last_five_commands_with_their_outcome(cp: ChargePoint) -> None:
    start = datetime.now(UTC) - timedelta(minutes=10)
    for minute in range(4):
        stored_command(cp, created_at=start + timedelta(minutes=minute), value=6.0 + minute)
    stored_command(cp, created_at=start + timedelta(minutes=5), action="pause", value=None)
    stored_command(
        cp, created_at=start + timedelta(minutes=6), status=CommandStatus.APPLIED, value=10.0, read_back=10.0
    )
    stored_command(
        cp,
        created_at=start + timedelta(minutes=7),
        status=CommandStatus.FAILED,
        reason_code=FailureReason.READBACK_MISMATCH,
        reason="expected 12 A, read 16 A",
        value=12.0,
    )
    client, _ = user_client("viewer", permitted=False)
    html = page_html(client)
    items = re.findall(
        r'<li class="command-item" data-command-id="[^"]+" data-state="(\w+)">\s*'
        r'<span class="command-what">([^<]*)</span>\s*<span class="command-result">([^<]*)</span>',
        html,
    )
    assert items == [
        ("failed", "Set limit 12 A", "failed — expected 12 A, read 16 A"),
        ("applied", "Set limit 10 A", "applied — read back 10 A"),
        ("pending", "Pause charging", "pending"),
        ("pending", "Set limit 9 A", "pending"),
        ("pending", "Set limit 8 A", "pending"),
    ]


def test_the_page_shows_the_limit_an_operator_set(cp: ChargePoint) -> None:
    client, _ = user_client("viewer", permitted=False)
    note = re.compile(
        r'<span class="value-note" data-active-limit( hidden)?>Limit set by operator: <span[^>]*>([^<]*)<'
    )
    assert note.search(page_html(client)).groups() == (" hidden", "")
    record = build_record(
        charge_point="cp-1", site="test-site", profile=cp.profile.slug, seq=1, fields=None, active_limit_a=10.0
    )
    LatestTelemetry.objects.create(charge_point=cp, record=record, source_ts=parse_ts(record["ts"]))
    assert note.search(page_html(client)).groups() == (None, "10")
