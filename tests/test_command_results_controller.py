"""The audit of a site controller's commands: the server never saw them (the poller's controller made
them), so the result creates the row (via "controller", the controller as the user), once however
often it is delivered; a failed one raises the "Command failed" alert through runconsumer."""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from asgiref.sync import sync_to_async
from django.db import connections

from gateway import services
from gateway.choices import AlertKind, CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.results import store_results
from gateway.commands.service import command_json
from gateway.kafka.config import producer_options
from gateway.kafka.topics import command_results_topic
from gateway.models import Alert, ChargePoint, Command, DeviceProfile, Site
from tests.conftest import make_charge_point, within
from tests.test_alerts import create_builtin_rules
from tests.test_command_results import site_updates  # noqa: F401 (the `site_updates` fixture)

pytestmark = pytest.mark.django_db(transaction=True)

CONTROLLER = "controller:test-site"


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The sinks store through sync_to_async's thread: close its connection before the database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


def controller_command(charge_point: str = "cp-1", *, value: float | None = 10.0, age_s: float = 1.5) -> CommandMessage:
    """A command as the site controller builds it in the poller (DESIGN: user controller:<site>, uuid4 id)."""
    created_at = datetime.now(UTC) - timedelta(seconds=age_s)
    return CommandMessage(
        id=str(uuid.uuid4()),
        charge_point=charge_point,
        site="test-site",
        action="set_current_limit" if value is not None else "pause",
        value=value,
        user=CONTROLLER,
        created_at=created_at,
        expires_at=created_at + timedelta(seconds=10),
    )


async def test_a_controller_result_creates_its_audit_row_once_and_is_pushed(
    site: Site,
    generic_profile: DeviceProfile,
    site_updates: asyncio.Queue,  # noqa: F811 (the fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    charge_point = await sync_to_async(make_charge_point)(site, generic_profile, "cp-1", 15001)
    command = controller_command()
    applied = CommandResult.applied(command, read_back=10.0, poller="poller-a")

    [created] = await store_results([applied])

    row = await Command.objects.aget(id=command.id)
    assert (row.via, row.username, row.user_id) == ("controller", CONTROLLER, None)
    assert (row.charge_point_id, row.charge_point_slug, row.site_slug) == (charge_point.id, "cp-1", "test-site")
    assert (row.action, row.value, row.status, row.read_back) == (
        "set_current_limit",
        10.0,
        CommandStatus.APPLIED,
        10.0,
    )
    assert (row.reason_code, row.reason, row.poller) == ("", "", "poller-a")
    assert (row.created_at, row.completed_at) == (command.created_at, applied.completed_at)
    assert row.received_at is not None and row.latency_ms >= 1500
    assert command_json(created) == command_json(row)
    assert await within(site_updates.get(), 5) == {"type": "command.update", "commands": [command_json(row)]}

    # Delivered again (the consumer is at least once; a poller re-publishes its stored results):
    # the row stands as it was, nothing is pushed, and no "unknown command" is complained of.
    with caplog.at_level(logging.INFO, logger="gateway.commands.results"):
        assert await store_results([applied]) == []
    assert await Command.objects.acount() == 1
    assert command_json(await Command.objects.aget(id=command.id)) == command_json(row)
    assert "unknown command" not in caplog.text
    assert site_updates.empty()


async def test_a_failed_controller_result_keeps_why_and_an_old_poller_result_dates_it_by_completion(
    site: Site,
) -> None:
    mismatch = CommandResult.failed(
        controller_command("cp-9"),
        FailureReason.READBACK_MISMATCH,
        "expected 10 A, read 16 A",
        poller="p",
        read_back=16.0,
    )
    pause = controller_command("cp-2", value=None)
    without_created_at = CommandResult(
        **(CommandResult.applied(pause, None, poller="p").__dict__ | {"created_at": None})
    )
    not_an_id = CommandResult.applied(CommandMessage(**(pause.__dict__ | {"id": "x"})), None, poller="p")
    await store_results([mismatch, without_created_at, not_an_id])

    failed = await Command.objects.aget(id=mismatch.id)
    assert (failed.status, failed.reason_code, failed.reason, failed.read_back) == (
        CommandStatus.FAILED,
        FailureReason.READBACK_MISMATCH,
        "expected 10 A, read 16 A",
        16.0,
    )
    assert failed.charge_point_id is None  # a charge point that is gone keeps its slug in the audit
    dated = await Command.objects.aget(id=pause.id)
    assert (dated.action, dated.value, dated.created_at) == ("pause", None, without_created_at.completed_at)
    assert await Command.objects.acount() == 2


async def produce(topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_run_consumer_audits_a_controller_command_from_kafka_and_alerts_on_its_failure(
    kafka: dict, site: Site, generic_profile: DeviceProfile
) -> None:
    """The ignoring charger of the design: a read-back mismatch of the controller's write is audited
    and raises the built-in "Command failed" alert."""
    await sync_to_async(create_builtin_rules)()
    charge_point: ChargePoint = await sync_to_async(make_charge_point)(site, generic_profile, "cp-1", 15001)
    result = CommandResult.failed(
        controller_command(), FailureReason.READBACK_MISMATCH, "expected 10 A, read 16 A", poller="p", read_back=16.0
    )
    await produce(command_results_topic(), [(result.key, result.to_json())])
    stop = asyncio.Event()
    task = asyncio.create_task(services.run_consumer(stop))
    try:
        deadline = time.monotonic() + 30
        while not await Alert.objects.filter(kind=AlertKind.COMMAND_FAILED).aexists():
            assert not task.done(), f"run_consumer ended: {task.exception()!r}"
            assert time.monotonic() < deadline, "no audit row and alert within 30 s"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await within(task, 20)
    row = await Command.objects.aget(id=result.id)
    assert (row.via, row.username, row.status, row.charge_point_id) == (
        "controller",
        CONTROLLER,
        CommandStatus.FAILED,
        charge_point.id,
    )
    alert = await Alert.objects.aget(kind=AlertKind.COMMAND_FAILED)
    assert (alert.charge_point_slug, alert.subject) == ("cp-1", result.id)
    assert "expected 10 A, read 16 A" in alert.message
