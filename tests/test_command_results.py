"""Command results at the server: stored once on the audit row (latency, read-back), pushed live;
the sweeper fails unanswered commands; run_consumer stores results produced to the real Kafka."""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from gateway import services
from gateway.choices import CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.results import NO_ANSWER_REASON, fail_unanswered, results_dead_letter_topic, store_results
from gateway.commands.service import command_json, command_message
from gateway.kafka.config import producer_options
from gateway.kafka.topics import command_results_topic
from gateway.live.groups import site_group
from gateway.models import Command, Site
from tests.conftest import within
from tests.kafka_read import headers_of, read_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The sinks store through sync_to_async's thread: close its connection before the database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


def pending_command(site: Site, *, age_s: float = 1.0, expiry_s: float = 30.0, slug: str = "cp-1") -> Command:
    """A command sent age_s ago (its charge point's row is not needed: the audit keeps the slug)."""
    created_at = datetime.now(UTC) - timedelta(seconds=age_s)
    return Command.objects.create(
        charge_point_slug=slug,
        site_slug=site.slug,
        action="set_current_limit",
        value=10.0,
        username="operator",
        via="web",
        created_at=created_at,
        expires_at=created_at + timedelta(seconds=expiry_s),
    )


def message_of(command: Command) -> CommandMessage:
    return command_message(command)


@pytest.fixture
async def site_updates() -> AsyncIterator[asyncio.Queue]:
    """The command updates pushed to the site group of "test-site", as a page of the site gets them."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(site_group("test-site"), channel)
    updates: asyncio.Queue = asyncio.Queue()

    async def receive() -> None:
        while True:
            await updates.put(await layer.receive(channel))

    task = asyncio.create_task(receive())
    yield updates
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await layer.group_discard(site_group("test-site"), channel)


async def test_a_result_completes_its_row_once_with_latency_and_is_pushed(
    site: Site, site_updates: asyncio.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    command = await sync_to_async(pending_command)(site, age_s=2.0)
    applied = CommandResult.applied(message_of(command), read_back=10.0, poller="poller-a")

    [completed] = await store_results([applied])

    stored = await Command.objects.aget(id=command.id)
    assert (stored.status, stored.reason_code, stored.reason) == (CommandStatus.APPLIED, "", "")
    assert (stored.read_back, stored.poller, stored.completed_at) == (10.0, "poller-a", applied.completed_at)
    assert stored.received_at is not None
    assert stored.latency_ms == pytest.approx((stored.received_at - stored.created_at).total_seconds() * 1000)
    assert stored.latency_ms >= 2000
    update = await within(site_updates.get(), 5)
    assert update == {"type": "command.update", "commands": [command_json(stored)]}
    assert command_json(completed) == command_json(stored)

    # A second result of the same command (redelivered, or another poller's) changes nothing.
    late = CommandResult.failed(message_of(command), FailureReason.TIMEOUT, "read timed out", poller="poller-b")
    with caplog.at_level(logging.INFO, logger="gateway.commands.results"):
        assert await store_results([late, applied]) == []
    assert command_json(await Command.objects.aget(id=command.id)) == command_json(stored)
    assert f"result failed of command {command.id} from poller-b ignored: it is already applied" in caplog.text
    assert site_updates.empty()


async def test_a_failed_result_stores_its_reason_and_read_back(site: Site) -> None:
    command = await sync_to_async(pending_command)(site)
    result = CommandResult.failed(
        message_of(command), FailureReason.READBACK_MISMATCH, "expected 10 A, read 16 A", poller="p", read_back=16.0
    )
    await store_results([result])
    stored = await Command.objects.aget(id=command.id)
    assert (stored.status, stored.reason_code, stored.reason, stored.read_back) == (
        CommandStatus.FAILED,
        FailureReason.READBACK_MISMATCH,
        "expected 10 A, read 16 A",
        16.0,
    )


async def test_results_of_unknown_commands_or_of_another_charge_point_are_logged_and_skipped(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    command = await sync_to_async(pending_command)(site)
    unknown = CommandResult.applied(
        CommandMessage(**(message_of(command).__dict__ | {"id": str(uuid.uuid4())})), 10.0, poller="p"
    )
    not_an_id = CommandResult.applied(CommandMessage(**(message_of(command).__dict__ | {"id": "x"})), 10.0, poller="p")
    elsewhere = CommandResult.applied(
        CommandMessage(**(message_of(command).__dict__ | {"charge_point": "cp-2"})), 10.0, poller="p"
    )
    with caplog.at_level(logging.WARNING, logger="gateway.commands.results"):
        assert await store_results([unknown, not_an_id, elsewhere]) == []
    assert f"result of unknown command '{unknown.id}'" in caplog.text
    assert "result of unknown command 'x'" in caplog.text
    assert f"result of command {command.id} for cp-2 ignored: the command went to cp-1" in caplog.text
    assert (await Command.objects.aget(id=command.id)).status == CommandStatus.PENDING


async def test_the_sweeper_fails_commands_nobody_answered_after_their_expiry_and_a_grace(site: Site) -> None:
    overdue = await sync_to_async(pending_command)(site, age_s=8.0, expiry_s=2.0)  # expired 6 s ago
    in_grace = await sync_to_async(pending_command)(site, age_s=4.0, expiry_s=2.0)  # expired 2 s ago
    answered = await sync_to_async(pending_command)(site, age_s=8.0, expiry_s=2.0)
    await store_results([CommandResult.applied(message_of(answered), 10.0, poller="p")])

    [failed] = await sync_to_async(fail_unanswered)()

    assert failed.id == overdue.id
    stored = await Command.objects.aget(id=overdue.id)
    assert (stored.status, stored.reason_code, stored.reason) == (
        CommandStatus.FAILED,
        FailureReason.NO_ANSWER,
        NO_ANSWER_REASON,
    )
    assert stored.completed_at is not None
    assert (await Command.objects.aget(id=in_grace.id)).status == CommandStatus.PENDING
    assert (await Command.objects.aget(id=answered.id)).status == CommandStatus.APPLIED
    assert await sync_to_async(fail_unanswered)() == []
    # A poller's result after the sweeper gave up is what happened at the charger: the audit takes
    # it (the sweeper only guessed); a second result after that changes nothing.
    [late] = await store_results([CommandResult.applied(message_of(overdue), 10.0, poller="p")])
    assert (late.status, late.reason_code, late.read_back, late.poller) == (CommandStatus.APPLIED, "", 10.0, "p")
    again = CommandResult.failed(message_of(overdue), FailureReason.TIMEOUT, "read timed out", poller="q")
    assert await store_results([again]) == []


async def produce(topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_run_consumer_stores_results_from_kafka_dead_letters_garbage_and_sweeps(
    kafka: dict, site: Site, site_updates: asyncio.Queue
) -> None:
    answered = await sync_to_async(pending_command)(site)
    unanswered = await sync_to_async(pending_command)(site, age_s=10.0, expiry_s=1.0, slug="cp-2")
    result = CommandResult.applied(message_of(answered), read_back=10.0, poller="poller-a")
    # Produced before the consumer's group exists: the results consumer starts from the earliest offset.
    await produce(command_results_topic(), [(b"cp-1", b'{"type": "telemetry"}'), (result.key, result.to_json())])

    stop = asyncio.Event()
    task = asyncio.create_task(services.run_consumer(stop))
    try:
        deadline = time.monotonic() + 30
        while await Command.objects.filter(status=CommandStatus.PENDING).aexists():
            assert not task.done(), f"run_consumer ended: {task.exception()!r}"
            assert time.monotonic() < deadline, "the result was not stored, or the sweeper did not run, in 30 s"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await within(task, 20)
    stored = await Command.objects.aget(id=answered.id)
    assert (stored.status, stored.read_back, stored.poller) == (CommandStatus.APPLIED, 10.0, "poller-a")
    swept = await Command.objects.aget(id=unanswered.id)
    assert (swept.status, swept.reason_code) == (CommandStatus.FAILED, FailureReason.NO_ANSWER)
    pushed = [command["id"] for _ in range(2) for command in (await within(site_updates.get(), 5))["commands"]]
    assert sorted(pushed) == sorted([str(answered.id), str(unanswered.id)])
    [letter] = await read_all(results_dead_letter_topic())
    assert letter.value == b'{"type": "telemetry"}'
    assert headers_of(letter)["evdash.stage"] == "decode"
    assert headers_of(letter)["evdash.reason"] == "InvalidMessage: type: expected 'command_result', got 'telemetry'"
