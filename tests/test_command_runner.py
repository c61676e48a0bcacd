"""The poller's command transport: CommandRunner against its journal and a real outbox (and real
Kafka), and the command sources against the embedded Kafka and a real Mosquitto.

The poller here is a stand-in object: it is ours, not a server, and the runner only asks it
which charge points it polls and to queue a command (tests/test_poller_commands.py runs the real one).
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from django.conf import settings

from gateway.choices import CommandStatus, FailureReason
from gateway.commands import intake
from gateway.commands.intake import KafkaCommandSource, MqttCommandSource, build_command_source
from gateway.commands.journal import CommandJournal
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.runner import INTERRUPTED_REASON, CommandRunner
from gateway.kafka.config import producer_options
from gateway.kafka.embedded import start_broker, stop_broker
from gateway.kafka.topics import command_results_topic, commands_topic, ensure_topics, telemetry_topic
from gateway.kafka.transport import KafkaTransport
from gateway.publish.outbox import Outbox
from gateway.publish.outputs import command_result_topic
from gateway.publish.publisher import OutboxPublisher
from tests.conftest import free_port
from tests.kafka_read import read_all
from tests.mosquitto import Mosquitto, User
from tests.processes import wait_until_async
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(90)

POLLER_ID = "p1"
OWNED = "cp-1"


def command(charge_point: str = OWNED, expires_in_s: float = 30.0, **changes: object) -> CommandMessage:
    now = datetime.now(UTC)
    fields = {
        "id": str(uuid.uuid4()),
        "charge_point": charge_point,
        "site": "depot",
        "action": "set_current_limit",
        "value": 10.0,
        "user": "operator",
        "created_at": now,
        "expires_at": now + timedelta(seconds=expires_in_s),
    } | changes
    return CommandMessage(**fields)


class StandInPoller:
    """Polls `owned`; queues what it is given (the real Poller's submit_command contract)."""

    def __init__(self, owned: tuple[str, ...] = (OWNED,)) -> None:
        self.tasks = dict.fromkeys(owned)
        self.submitted: list[CommandMessage] = []

    def submit_command(self, command: CommandMessage) -> bool:
        if command.charge_point not in self.tasks:
            return False
        self.submitted.append(command)
        return True


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[CommandJournal]:
    journal = CommandJournal(tmp_path / "commands-p1.sqlite3")
    yield journal
    journal.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    outbox = Outbox(tmp_path / "poller-p1.sqlite3")
    yield outbox
    outbox.close()


def make_runner(
    journal: CommandJournal, outbox: Outbox, output: str = "kafka", poller: StandInPoller | None = None
) -> CommandRunner:
    """A runner publishing into `outbox` (not started: what it publishes stays there to be read)."""
    publisher = OutboxPublisher(outbox, KafkaTransport(telemetry_topic()))
    return CommandRunner(
        poller or StandInPoller(),
        publisher,
        journal,
        poller_id=POLLER_ID,
        result_topic=command_result_topic(output),
    )


def published(outbox: Outbox) -> list[tuple[str, bytes, dict]]:
    """What the runner put in the outbox: (topic, key, decoded result)."""
    return [(entry.topic, entry.key, orjson.loads(entry.value)) for entry in outbox.oldest(100)]


# --- CommandRunner -----------------------------------------------------------------------------


def test_a_new_command_for_an_owned_charge_point_is_queued_and_logged(
    journal: CommandJournal, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner(journal, outbox)
    new = command(user="alice")
    with caplog.at_level(logging.INFO, logger="gateway.commands.runner"):
        runner.deliver(new)
    assert runner.poller.submitted == [new]
    assert published(outbox) == []
    line = next(r.getMessage() for r in caplog.records if new.id in r.getMessage())
    assert all(part in line for part in (OWNED, "set_current_limit", "10.0", "alice")), line


def test_a_command_for_another_pollers_charge_point_is_ignored(journal: CommandJournal, outbox: Outbox) -> None:
    runner = make_runner(journal, outbox)
    runner.deliver(command(charge_point="cp-elsewhere"))
    runner.deliver(command(charge_point="cp-elsewhere", expires_in_s=-1))  # expired: not ours to answer either
    assert runner.poller.submitted == []
    assert published(outbox) == []


def test_a_copy_of_a_command_in_progress_is_ignored(journal: CommandJournal, outbox: Outbox) -> None:
    runner = make_runner(journal, outbox)
    queued = command()
    runner.deliver(queued)
    assert runner.claim(queued)  # the charge point's task took it and writes now
    runner.deliver(queued)  # a copy arrives meanwhile (an MQTT resend, a replayed offset)
    assert runner.poller.submitted == [queued]
    assert published(outbox) == []  # no "interrupted" for a command being carried out


def test_claim_then_finish_journals_and_publishes_the_result(journal: CommandJournal, outbox: Outbox) -> None:
    runner = make_runner(journal, outbox)
    done = command()
    runner.deliver(done)
    assert runner.claim(done)
    assert not runner.claim(done)  # claimed once, whatever asks again
    result = CommandResult.applied(done, 10.0, poller=POLLER_ID)
    runner.finish(result)
    assert journal.result_of(done.id).to_json() == result.to_json()
    assert published(outbox) == [(command_results_topic(), OWNED.encode(), orjson.loads(result.to_json()))]
    runner.finish(CommandResult.failed(done, FailureReason.TIMEOUT, "late", poller=POLLER_ID))
    assert len(published(outbox)) == 1  # a second result is dropped: the first one stands


def test_a_finished_command_delivered_again_gets_its_stored_result_again(
    journal: CommandJournal, outbox: Outbox
) -> None:
    runner = make_runner(journal, outbox)
    done = command()
    runner.deliver(done)
    runner.claim(done)
    runner.finish(CommandResult.applied(done, 10.0, poller=POLLER_ID))
    restarted = make_runner(journal, outbox)  # a new process, the same journal
    restarted.deliver(done)
    assert restarted.poller.submitted == []
    first, again = published(outbox)
    assert first == again and again[2]["status"] == CommandStatus.APPLIED
    assert restarted.republished == 1


def test_a_command_claimed_but_not_finished_fails_as_interrupted_and_is_not_queued(
    journal: CommandJournal, outbox: Outbox
) -> None:
    """The poller died between the write and the result: after the restart it is never written again."""
    before = make_runner(journal, outbox)
    written = command()
    before.deliver(written)
    assert before.claim(written)
    after = make_runner(journal, outbox)
    after.deliver(written)
    assert after.poller.submitted == []
    ((topic, key, result),) = published(outbox)
    assert (topic, key) == (command_results_topic(), OWNED.encode())
    assert (result["status"], result["reason_code"], result["reason"]) == (
        "failed",
        "interrupted",
        INTERRUPTED_REASON,
    )
    assert result["poller"] == POLLER_ID
    after.deliver(written)  # and again: the same stored result, still no write
    assert after.poller.submitted == []
    assert published(outbox)[1][2] == result


def test_an_expired_command_fails_as_expired_without_being_queued(journal: CommandJournal, outbox: Outbox) -> None:
    runner = make_runner(journal, outbox)
    late = command(expires_in_s=-0.5)
    runner.deliver(late)
    assert runner.poller.submitted == []
    ((_topic, _key, result),) = published(outbox)
    assert (result["status"], result["reason_code"]) == ("failed", "expired")
    assert not runner.claim(late)  # it has a result: it can never be written


def test_on_mqtt_results_go_to_the_charge_points_results_topic(journal: CommandJournal, outbox: Outbox) -> None:
    runner = make_runner(journal, outbox, output="mqtt")
    runner.finish(CommandResult.applied(command(), 10.0, poller=POLLER_ID))
    ((topic, key, _result),) = published(outbox)
    assert (topic, key) == (f"evdash/depot/{OWNED}/command-results", OWNED.encode())


async def test_results_reach_kafka_through_the_outbox(kafka: dict, journal: CommandJournal, outbox: Outbox) -> None:
    await ensure_topics([command_results_topic()])
    runner = make_runner(journal, outbox)
    await runner.publisher.start()
    try:
        done, late = command(), command(expires_in_s=-1)
        runner.deliver(done)
        runner.claim(done)
        runner.finish(CommandResult.applied(done, 9.9, poller=POLLER_ID))
        runner.deliver(late)
        assert await runner.publisher.flush(20)
    finally:
        await runner.publisher.close()
    messages = await read_all(command_results_topic())
    results = [CommandResult.from_json(m.value) for m in messages]
    assert {r.id: (r.status, r.reason_code, r.read_back) for r in results} == {
        done.id: ("applied", None, 9.9),
        late.id: ("failed", "expired", None),
    }
    assert {m.key for m in messages} == {OWNED.encode()}


# --- KafkaCommandSource ------------------------------------------------------------------------


class Inbox:
    """A deliver() that keeps what it is given."""

    def __init__(self) -> None:
        self.commands: list[CommandMessage] = []

    def __call__(self, command: CommandMessage) -> None:
        self.commands.append(command)

    def ids(self) -> list[str]:
        return [c.id for c in self.commands]


@contextlib.asynccontextmanager
async def running(
    source: KafkaCommandSource | MqttCommandSource, *, ready: bool = True
) -> AsyncIterator[tuple[Inbox, asyncio.Task]]:
    """The source running until the block ends (stopped by its stop event, which must end it)."""
    inbox, stop = Inbox(), asyncio.Event()
    task = asyncio.create_task(source.run(stop, inbox))
    try:
        if ready:
            await asyncio.wait_for(source.ready.wait(), 30)
        yield inbox, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def produce(*values: bytes, key: bytes = OWNED.encode()) -> None:
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(commands_topic(), value, key=key)
    finally:
        await producer.stop()


async def test_kafka_commands_are_delivered_and_malformed_ones_skipped(
    kafka: dict, caplog: pytest.LogCaptureFixture
) -> None:
    await ensure_topics([commands_topic()])
    before = command()
    await produce(before.to_json())  # a new group starts at the end: never delivered
    source = build_command_source("kafka", site=None, poller_id="p-kafka")
    assert isinstance(source, KafkaCommandSource) and source.group_id == "evdash-poller-p-kafka"
    good, other = command(), command(charge_point="cp-2")
    async with running(source) as (inbox, _task):
        with caplog.at_level(logging.WARNING, logger="gateway.commands.intake"):
            await produce(b"{not json", good.to_json(), b'{"type": "command"}')
            await produce(other.to_json(), key=b"cp-2")  # the other partition, most likely: all are read
            await wait_until_async(lambda: len(inbox.commands) == 2, 20, "two commands")
            await wait_until_async(lambda: source.malformed.count == 2, 20, "two malformed messages")
    assert sorted(inbox.ids()) == sorted([good.id, other.id])
    assert before.id not in inbox.ids()
    warnings = [r.getMessage() for r in caplog.records if "malformed command" in r.getMessage()]
    assert len(warnings) == 1, warnings  # rate-limited: one line, both counted
    assert source.received == 4


async def test_kafka_offsets_are_committed_only_after_the_command_expired(
    kafka: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted poller reads again the commands that could still be in progress, not the others."""
    await ensure_topics([commands_topic()])
    monkeypatch.setattr(intake, "HOLD_AFTER_EXPIRY_S", 0.0)
    expired, live = command(expires_in_s=-1), command(expires_in_s=60)
    async with running(KafkaCommandSource(poller_id="p-commit")) as (inbox, _task):
        await produce(expired.to_json())
        await wait_until_async(lambda: inbox.ids() == [expired.id], 20, "the expired command")
        await produce(live.to_json())
        await wait_until_async(lambda: inbox.ids() == [expired.id, live.id], 20, "the live command")
    async with running(KafkaCommandSource(poller_id="p-commit")) as (inbox, _task):  # a restart
        await wait_until_async(lambda: inbox.ids() == [live.id], 20, "the live command again")
        later = command()
        await produce(later.to_json())
        await wait_until_async(lambda: inbox.ids() == [live.id, later.id], 20, "a new command")


async def test_a_new_kafka_group_reads_again_what_it_took_before_a_stop(kafka: dict) -> None:
    """Its start is committed at once: a poller stopped (or killed) before its first commit does
    not start at the end again, past the commands it had not finished."""
    await ensure_topics([commands_topic()])
    taken = command()
    async with running(KafkaCommandSource(poller_id="p-new")) as (inbox, _task):
        await produce(taken.to_json())
        await wait_until_async(lambda: inbox.ids() == [taken.id], 20, "the command")
    async with running(KafkaCommandSource(poller_id="p-new")) as (inbox, _task):
        await wait_until_async(lambda: inbox.ids() == [taken.id], 20, "the command again")


async def test_the_kafka_source_rides_out_a_broker_outage(
    kafka: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unreachable at the start, then cut while running: it says so, reconnects and delivers."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy("127.0.0.1", broker_port, proxy_port)
    broker = await asyncio.to_thread(
        start_broker, port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "tansu.log"
    )
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{proxy_port}")
    source = KafkaCommandSource(poller_id="p-outage")
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.commands.intake"):
            async with running(source, ready=False) as (inbox, task):
                await wait_until_async(
                    lambda: "Kafka unavailable for commands" in caplog.text, 30, "the outage in the log"
                )
                assert not source.ready.is_set()
                await proxy.start()
                await ensure_topics([commands_topic()])
                await asyncio.wait_for(source.ready.wait(), 30)
                first = command()
                await produce(first.to_json())
                await wait_until_async(lambda: inbox.ids() == [first.id], 20, "the first command")
                connections = proxy.connections_seen
                assert await proxy.cut()  # every connection reset: the source's included
                await proxy.restore()
                second = command()
                await produce(second.to_json())
                await wait_until_async(lambda: second.id in inbox.ids(), 60, "a command after the outage")
                assert proxy.connections_seen > connections + 1  # the producer's, and the source's again
                assert not task.done()
    finally:
        await proxy.close()
        await asyncio.to_thread(stop_broker, broker)
    assert inbox.ids()[0] == first.id and inbox.ids()[-1] == second.id


# --- MqttCommandSource -------------------------------------------------------------------------

USERS = {
    "poller": User("poller-Secr3t!pw", ("read evdash/+/+/commands", "write evdash/+/+/command-results")),
    "bridge": User("bridge-Secr3t!pw", ("write evdash/+/+/commands",)),
}


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mosquitto]:
    """Mosquitto with the edge users' command ACLs; the product connects as "poller" over TLS."""
    with Mosquitto(tmp_path / "mosquitto", users=USERS) as mosquitto:
        monkeypatch.setitem(settings.EVDASH, "MQTT_URL", mosquitto.url("poller"))
        monkeypatch.setitem(settings.EVDASH, "MQTT_CA_FILE", str(mosquitto.ca_file))
        yield mosquitto


async def publish(broker: Mosquitto, *messages: tuple[str, bytes]) -> None:
    """Publish as the bridge does: QoS 1."""
    async with aiomqtt.Client(**broker.client_options("bridge")) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def test_mqtt_commands_of_the_site_are_delivered_and_malformed_ones_skipped(broker: Mosquitto) -> None:
    source = build_command_source("mqtt", site="depot", poller_id="edge-1")
    assert isinstance(source, MqttCommandSource)
    assert (source.subscription, source.client_id) == ("evdash/depot/+/commands", "evdash-poller-edge-1-commands")
    good, other_site = command(), command(site="yard")
    async with running(source) as (inbox, _task):
        await publish(
            broker,
            ("evdash/depot/cp-1/commands", b"not json"),
            ("evdash/depot/cp-2/commands", good.to_json()),  # names another charge point than its topic
            ("evdash/yard/cp-1/commands", other_site.to_json()),  # another site: not subscribed
            ("evdash/depot/cp-1/commands", good.to_json()),
        )
        await wait_until_async(lambda: inbox.ids() == [good.id], 20, "the good command")
        await wait_until_async(lambda: source.malformed.count == 2, 20, "two malformed messages")
    assert source.received == 3


async def test_mqtt_commands_sent_while_the_poller_is_away_arrive_when_it_is_back(broker: Mosquitto) -> None:
    """The persistent session: the broker keeps QoS 1 commands for the poller's client id."""
    async with running(MqttCommandSource(site="depot", poller_id="edge-2")):
        pass  # subscribed once: the session exists
    away = command()
    await publish(broker, ("evdash/depot/cp-1/commands", away.to_json()))
    source = MqttCommandSource(site="depot", poller_id="edge-2")
    async with running(source) as (inbox, _task):
        await wait_until_async(lambda: inbox.ids() == [away.id], 20, "the command sent while away")
    assert source.connects == 1


async def test_the_mqtt_source_reconnects_after_the_broker_restarts(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    source = MqttCommandSource(site="depot", poller_id="edge-3")
    with caplog.at_level(logging.WARNING, logger="gateway.commands.intake"):
        async with running(source) as (inbox, _task):
            await asyncio.to_thread(broker.restart)  # no persistence: the session is gone too
            await wait_until_async(lambda: source.connects == 2 and source.ready.is_set(), 30, "a reconnect")
            after = command()
            await publish(broker, ("evdash/depot/cp-1/commands", after.to_json()))
            await wait_until_async(lambda: inbox.ids() == [after.id], 20, "a command after the restart")
    assert "lost the MQTT broker" in caplog.text
    assert broker.users["poller"].password not in caplog.text
