"""send_command: what the server refuses (and audits), what it publishes to the real (Tansu) Kafka,
and the shapes the page reads (command_json, command_controls); the Command admin is read-only."""

import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from gateway.choices import OPERATOR_ACTIONS, CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage
from gateway.commands.service import (
    CommandRefused,
    command_controls,
    command_json,
    send_command,
    wait_for_result,
)
from gateway.kafka.topics import commands_topic, ensure_topics
from gateway.models import ChargePoint, Command, DeviceProfile, Site
from gateway.profiles.spec import CommandSpec, ProfileSpec, RegisterSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from tests.conftest import free_port, make_charge_point, stored_profile
from tests.kafka_read import read_all

pytestmark = pytest.mark.django_db

RESUME_UNSUPPORTED = "this test charger resumes only from its own app"
COMMAND_JSON_KEYS = {
    "id",
    "charge_point",
    "action",
    "value",
    "status",
    "reason_code",
    "reason",
    "read_back",
    "username",
    "created_at",
    "expires_at",
    "completed_at",
    "latency_ms",
}


def command_profile_spec(**set_limit: float | None) -> ProfileSpec:
    """The generic charger's registers with commands of the test's own: a limit of 6..32 A on
    max_current (which takes 0 or 6..32 A), pause by 0 A, no resume."""
    generic = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
    limits = {"min_value": 6.0, "max_value": 32.0} | set_limit
    return replace(
        generic,
        slug="command-test",
        name="Command test charger",
        commands=(
            CommandSpec("set_current_limit", register="max_current", tolerance=0.05, settle_s=0.2, **limits),
            CommandSpec("pause", register="max_current", value=0.0, settle_s=0.2),
            CommandSpec("resume", unsupported=RESUME_UNSUPPORTED),
        ),
    )


def operator_with_permission(name: str = "operator") -> User:
    user = User.objects.create_user(name, password="not-used-here")
    user.user_permissions.add(Permission.objects.get(codename="send_command"))
    return User.objects.get(pk=user.pk)  # fresh: permissions are cached per instance


@pytest.fixture
def command_profile(db: None) -> DeviceProfile:
    return stored_profile(command_profile_spec())


@pytest.fixture
def charge_point(site: Site, command_profile: DeviceProfile) -> ChargePoint:
    return make_charge_point(site, command_profile, "cp-1", free_port())


@pytest.fixture
def operator(db: None) -> User:
    return operator_with_permission()


@pytest.fixture
def commands(kafka: dict) -> str:
    """This test's commands topic, created (one partition) so that an empty one can be read."""
    async_to_sync(ensure_topics)([commands_topic()], partitions=1)
    return commands_topic()


def published(topic: str) -> list[tuple[bytes, CommandMessage]]:
    return [(message.key, CommandMessage.from_json(message.value)) for message in async_to_sync(read_all)(topic)]


def test_a_permitted_command_is_audited_pending_and_published_keyed_by_its_charge_point(
    commands: str, charge_point: ChargePoint, operator: User
) -> None:
    command = send_command(charge_point, "set_current_limit", 10.0, user=operator)

    stored = Command.objects.get(id=command.id)
    assert (stored.status, stored.reason_code, stored.reason) == (CommandStatus.PENDING, "", "")
    assert (stored.charge_point, stored.charge_point_slug, stored.site_slug) == (charge_point, "cp-1", "test-site")
    assert (stored.action, stored.value, stored.user, stored.username, stored.via) == (
        "set_current_limit",
        10.0,
        operator,
        "operator",
        "web",
    )
    expiry_s = settings.EVDASH["COMMAND_EXPIRY_S"]
    assert stored.expires_at - stored.created_at == timedelta(seconds=expiry_s)

    [(key, message)] = published(commands)
    assert key == b"cp-1"
    assert message == CommandMessage(
        id=str(command.id),
        charge_point="cp-1",
        site="test-site",
        action="set_current_limit",
        value=10.0,
        user="operator",
        # The message carries milliseconds (the contract's timestamps), the row microseconds.
        created_at=stored.created_at.replace(microsecond=stored.created_at.microsecond // 1000 * 1000),
        expires_at=stored.expires_at.replace(microsecond=stored.expires_at.microsecond // 1000 * 1000),
    )


def test_a_cli_command_by_slug_carries_the_given_username_and_its_own_expiry(
    commands: str, charge_point: ChargePoint
) -> None:
    command = send_command("cp-1", "pause", username="cli:alice", via="cli", expiry_s=3)
    assert (command.user, command.username, command.via, command.value) == (None, "cli:alice", "cli", None)
    assert command.expires_at - command.created_at == timedelta(seconds=3)
    [(_key, message)] = published(commands)
    assert (message.id, message.action, message.user) == (str(command.id), "pause", "cli:alice")


def refused(charge_point: ChargePoint | str, action: str, value: float | None = None, **options) -> CommandRefused:
    """send_command's refusal; its row must be stored, failed, with the same reason."""
    with pytest.raises(CommandRefused) as caught:
        send_command(charge_point, action, value, **options)
    refusal = caught.value
    stored = Command.objects.get(id=refusal.command.id)
    assert (stored.status, stored.reason_code, stored.reason) == (
        CommandStatus.FAILED,
        refusal.reason_code,
        refusal.reason,
    )
    assert stored.completed_at is not None
    return refusal


def test_a_user_without_the_permission_is_refused_logged_and_audited_and_nothing_is_sent(
    commands: str, charge_point: ChargePoint, caplog: pytest.LogCaptureFixture
) -> None:
    intruder = User.objects.create_user("intruder", password="not-used-here")
    with caplog.at_level(logging.WARNING, logger="gateway.commands.service"):
        refusal = refused(charge_point, "set_current_limit", 10.0, user=intruder)
    assert refusal.reason_code == FailureReason.NOT_PERMITTED
    assert (refusal.command.user, refusal.command.username, refusal.command.value) == (intruder, "intruder", 10.0)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "intruder" in warning.getMessage() and "cp-1" in warning.getMessage()
    assert published(commands) == []


@pytest.mark.parametrize(
    ("action", "value", "reason_code", "reason"),
    [
        ("resume", None, FailureReason.UNSUPPORTED, RESUME_UNSUPPORTED),
        ("set_current_limit", 40.0, FailureReason.OUT_OF_RANGE, "40 A is outside 6..32 A, the range of command-test"),
        ("set_current_limit", 5.5, FailureReason.OUT_OF_RANGE, "5.5 A is outside 6..32 A, the range of command-test"),
        ("set_current_limit", None, FailureReason.INVALID, "set_current_limit needs a value in A"),
        ("set_current_limit", float("nan"), FailureReason.INVALID, "nan is not a current in A"),
        ("pause", 10.0, FailureReason.INVALID, "pause takes no value"),
        (
            "reboot",
            None,
            FailureReason.INVALID,
            "unknown action 'reboot' (one of set_current_limit, pause, resume, set_failsafe_current, "
            "set_failsafe_timeout)",
        ),
    ],
)
def test_the_server_refuses_what_the_profile_does_not_allow_and_audits_it(
    commands: str,
    charge_point: ChargePoint,
    operator: User,
    action: str,
    value: float | None,
    reason_code: str,
    reason: str,
) -> None:
    refusal = refused(charge_point, action, value, user=operator)
    assert (refusal.reason_code, refusal.reason) == (reason_code, reason)
    assert refusal.command.username == "operator"
    assert published(commands) == []


def test_a_limit_the_register_cannot_take_is_refused_even_when_the_command_has_no_range(
    commands: str, site: Site, operator: User
) -> None:
    # A profile stored before validation: the command has no range of its own, the register has.
    profile = stored_profile(command_profile_spec(min_value=None, max_value=None))
    make_charge_point(site, profile, "cp-1", free_port())
    refusal = refused("cp-1", "set_current_limit", 40.0, user=operator)
    assert refusal.reason_code == FailureReason.OUT_OF_RANGE
    assert refusal.reason.startswith("40.0 is above the maximum 32.0 A of max_current (allowed: 0 or 6..32 A)")
    assert send_command("cp-1", "set_current_limit", 0.0, user=operator).status == CommandStatus.PENDING
    assert [message.value for _key, message in published(commands)] == [0.0]


def failsafe_profile_spec() -> ProfileSpec:
    """The test charger with a failsafe current register taking 0 or 6..32 A (KEBA's and ABB's kind)."""
    spec = command_profile_spec()
    register = RegisterSpec(
        "failsafe_current", 16, unit="A", scale=0.1, access="rw", write_min=6.0, write_max=32.0, write_values=(0.0,)
    )
    failsafe = CommandSpec(
        "set_failsafe_current", register="failsafe_current", min_value=0.0, max_value=32.0, tolerance=0.05
    )
    return replace(
        spec, slug="failsafe-test", registers=(*spec.registers, register), commands=(*spec.commands, failsafe)
    )


def test_the_service_sends_a_failsafe_current_range_checked_but_the_page_and_api_do_not(
    commands: str, site: Site, operator: User
) -> None:
    make_charge_point(site, stored_profile(failsafe_profile_spec()), "cp-fs", free_port())
    command = send_command("cp-fs", "set_failsafe_current", 0.0, username="controller:test-site", via="controller")
    assert (command.status, command.action, command.value) == (CommandStatus.PENDING, "set_failsafe_current", 0.0)
    [(_key, message)] = published(commands)
    assert (message.action, message.value) == ("set_failsafe_current", 0.0)

    refusal = refused("cp-fs", "set_failsafe_current", 40.0, user=operator)
    assert (refusal.reason_code, refusal.reason) == (
        FailureReason.OUT_OF_RANGE,
        "40 A is outside 0..32 A, the range of failsafe-test",
    )
    refusal = refused("cp-fs", "set_failsafe_current", 3.0, user=operator)  # in the range, not on the register
    assert refusal.reason_code == FailureReason.OUT_OF_RANGE and "(allowed: 0 or 6..32 A)" in refusal.reason
    refusal = refused("cp-fs", "set_failsafe_current", None, user=operator)
    assert (refusal.reason_code, refusal.reason) == (FailureReason.INVALID, "set_failsafe_current needs a value in A")
    refusal = refused("cp-fs", "set_failsafe_timeout", 30.0, user=operator)
    assert (refusal.reason_code, refusal.reason) == (
        FailureReason.UNSUPPORTED,
        "the profile failsafe-test declares no set_failsafe_timeout command",
    )
    # The page's and the API's entry point: the operator actions only.
    refusal = refused("cp-fs", "set_failsafe_current", 10.0, user=operator, actions=OPERATOR_ACTIONS)
    assert (refusal.reason_code, refusal.reason) == (
        FailureReason.INVALID,
        "set_failsafe_current is not an operator command (one of set_current_limit, pause, resume): "
        "site load management sets it",
    )
    assert len(published(commands)) == 1


def test_a_profile_without_the_command_an_unknown_or_disabled_charge_point_are_refused(
    commands: str, site: Site, charge_point: ChargePoint, operator: User
) -> None:
    bare = stored_profile(replace(command_profile_spec(), slug="no-commands", commands=()))
    make_charge_point(site, bare, "cp-bare", free_port())
    refusal = refused("cp-bare", "pause", user=operator)
    assert (refusal.reason_code, refusal.reason) == (
        FailureReason.UNSUPPORTED,
        "the profile no-commands declares no pause command",
    )

    refusal = refused("cp-nowhere", "pause", user=operator)
    assert (refusal.reason_code, refusal.reason) == (FailureReason.INVALID, "no charge point 'cp-nowhere'")
    assert (refusal.command.charge_point, refusal.command.charge_point_slug) == (None, "cp-nowhere")

    ChargePoint.objects.filter(pk=charge_point.pk).update(enabled=False)
    refusal = refused("cp-1", "pause", user=operator)
    assert (refusal.reason_code, refusal.reason) == (FailureReason.OFFLINE, "cp-1 is disabled: no poller polls it")
    assert published(commands) == []


def test_when_kafka_does_not_take_the_command_its_row_fails_with_the_reason(
    kafka: dict, charge_point: ChargePoint, operator: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # nobody there
    refusal = refused(charge_point, "pause", user=operator)
    assert refusal.reason_code == FailureReason.TIMEOUT
    assert refusal.reason.startswith("could not send the command to Kafka (KafkaConnectionError: ")
    assert refusal.reason.endswith("); not sent")


def test_wait_for_result_returns_the_completed_row_or_the_pending_one_at_its_deadline(
    commands: str, charge_point: ChargePoint, operator: User
) -> None:
    command = send_command(charge_point, "pause", user=operator)
    assert wait_for_result(command.id, timeout_s=0.1).status == CommandStatus.PENDING
    Command.objects.filter(id=command.id).update(status=CommandStatus.APPLIED, read_back=0.0)
    completed = wait_for_result(command.id, timeout_s=30)
    assert (completed.status, completed.read_back) == (CommandStatus.APPLIED, 0.0)


def test_command_json_has_the_pinned_shape(commands: str, charge_point: ChargePoint, operator: User) -> None:
    command = send_command(charge_point, "set_current_limit", 16.0, user=operator)
    shown = command_json(command)
    assert set(shown) == COMMAND_JSON_KEYS
    assert shown | {"created_at": None, "expires_at": None} == {
        "id": str(command.id),
        "charge_point": "cp-1",
        "action": "set_current_limit",
        "value": 16.0,
        "status": "pending",
        "reason_code": None,
        "reason": None,
        "read_back": None,
        "username": "operator",
        "created_at": None,
        "expires_at": None,
        "completed_at": None,
        "latency_ms": None,
    }
    assert shown["created_at"].endswith("Z") and shown["expires_at"] > shown["created_at"]


def test_command_controls_give_each_actions_range_or_why_it_is_unsupported(charge_point: ChargePoint) -> None:
    assert command_controls(charge_point) == {
        "set_current_limit": {"supported": True, "min": 6.0, "max": 32.0, "unit": "A", "reason": ""},
        "pause": {"supported": True, "min": None, "max": None, "unit": "", "reason": ""},
        "resume": {"supported": False, "min": None, "max": None, "unit": "", "reason": RESUME_UNSUPPORTED},
    }


def test_the_admin_lists_commands_read_only_with_filters(
    admin_client, commands: str, charge_point: ChargePoint, operator: User
) -> None:
    command = send_command(charge_point, "set_current_limit", 10.0, user=operator)
    refused(charge_point, "set_current_limit", 99.0, user=operator)

    listing = admin_client.get(reverse("admin:gateway_command_changelist"), {"status__exact": "failed"})
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "99 A is outside 6..32 A" in page and "out of range" in page
    assert str(command.id) not in page  # the pending one is filtered out
    assert "/admin/gateway/command/add/" not in page
    for choice in ("action__exact=pause", "site_slug=test-site", "created_at__gte="):
        assert choice in page  # the filters are offered
    search = admin_client.get(reverse("admin:gateway_command_changelist"), {"q": "operator"})
    assert search.content.decode().count('class="field-charge_point_slug"') == 2

    change = reverse("admin:gateway_command_change", args=[command.id])
    assert admin_client.post(change, {"status": "applied"}).status_code == 403
    assert Command.objects.get(id=command.id).status == CommandStatus.PENDING
    assert admin_client.get(reverse("admin:gateway_command_add")).status_code == 403
    assert admin_client.post(reverse("admin:gateway_command_delete", args=[command.id])).status_code == 403
