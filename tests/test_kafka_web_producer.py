"""The web process's one Kafka producer (gateway/kafka/web_producer.py), against real Tansu brokers:
commands and acknowledgements share one connection, a broker outage fails a command in time and the
first one after it is sent, a changed bootstrap setting is followed, the process exits promptly,
and the SASL password stays out of the logs."""

import contextlib
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.contrib.auth.models import User

from gateway.alerts.actions import publish_alert
from gateway.choices import CommandStatus, FailureReason
from gateway.commands.messages import CommandMessage
from gateway.commands.service import PUBLISH_TIMEOUT_S, CommandRefused, send_command
from gateway.kafka import web_producer
from gateway.kafka.config import producer_options
from gateway.kafka.embedded import start_broker, stop_broker
from gateway.kafka.topics import alerts_topic, commands_topic, ensure_topics
from gateway.models import ChargePoint, Command, Site
from tests.conftest import free_port, make_charge_point, stored_profile
from tests.kafka_read import read_all
from tests.processes import process_env
from tests.tcp_proxy import TcpProxy
from tests.test_command_service import command_profile_spec, operator_with_permission

SASL_PASSWORD = "sasl-secret-Wp40-never-logged"  # a test value to look for in the logs
# How much later than PUBLISH_TIMEOUT_S a failed command may answer (scheduling on a busy machine).
ANSWER_SLACK_S = 1.5
# The producer that timed out flushes for up to its request timeout (15 s) before it is replaced.
OUTAGE_GIVE_UP_S = 60.0


class Broker:
    """A Tansu broker of the test's own on a fixed port, that the test can stop and start again."""

    def __init__(self, tmp_path: Path, port: int, advertised_port: int | None = None) -> None:
        self.port, self.advertised_port = port, advertised_port
        self.log_path = tmp_path / f"tansu-{port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    def start(self) -> None:
        self.process = start_broker(port=self.port, advertised_port=self.advertised_port, log_path=self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            stop_broker(self.process)
            self.process = None


@pytest.fixture
def broker(kafka: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    """A broker of this test's own, that the product is pointed at."""
    own = Broker(tmp_path, free_port())
    own.start()
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", own.bootstrap)
    try:
        yield own
    finally:
        web_producer.close()  # before its broker goes: nothing is left connected to a dead one
        own.stop()


@pytest.fixture
async def proxied_broker(kafka: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TcpProxy]:
    """A broker that clients reach only through a TcpProxy (it advertises the proxy's port): the
    proxy counts every connection a client opens."""
    proxy_port = free_port()
    own = Broker(tmp_path, free_port(), advertised_port=proxy_port)
    proxy = TcpProxy("127.0.0.1", own.port, proxy_port)
    await proxy.start()
    await sync_to_async(own.start, thread_sensitive=False)()
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", own.bootstrap)
    try:
        yield proxy
    finally:
        await sync_to_async(web_producer.close, thread_sensitive=False)()
        await proxy.close()
        await sync_to_async(own.stop, thread_sensitive=False)()


@pytest.fixture
def charge_point(site: Site) -> ChargePoint:
    return make_charge_point(site, stored_profile(command_profile_spec()), "cp-1", free_port())


@pytest.fixture
def operator(db: None) -> User:
    return operator_with_permission()


def published_command_ids(topic: str) -> list[str]:
    return [CommandMessage.from_json(message.value).id for message in async_to_sync(read_all)(topic)]


def refused_in_time(charge_point: ChargePoint, operator: User) -> CommandRefused:
    """A command that Kafka does not take: refused as a timeout within PUBLISH_TIMEOUT_S, its row failed."""
    started = time.monotonic()
    with pytest.raises(CommandRefused) as caught:
        send_command(charge_point, "pause", user=operator)
    answered_in_s = time.monotonic() - started
    assert answered_in_s < PUBLISH_TIMEOUT_S + ANSWER_SLACK_S, f"the page waited {answered_in_s:.1f} s"
    refusal = caught.value
    row = Command.objects.get(id=refusal.command.id)
    assert (row.status, row.reason_code, row.reason) == (CommandStatus.FAILED, FailureReason.TIMEOUT, refusal.reason)
    return refusal


@pytest.mark.django_db(transaction=True)
async def test_commands_and_acknowledgements_from_many_threads_share_one_connection(
    kafka: dict, proxied_broker: TcpProxy, charge_point: ChargePoint, operator: User
) -> None:
    """Web requests (threads) that send at the same moment start one producer between them, and
    the next requests send on its connections: no new connection per command."""
    proxy = proxied_broker
    await ensure_topics([commands_topic(), alerts_topic()], partitions=1)
    # What one producer costs in connections (bootstrap, then the partition leader), measured.
    before = proxy.connections_seen
    reference = AIOKafkaProducer(**producer_options())
    await reference.start()
    try:
        await reference.send_and_wait(alerts_topic(), b"{}", key=b"reference")
    finally:
        await reference.stop()
    one_producer = proxy.connections_seen - before

    def command_burst(threads: int) -> list[str]:
        """`threads` requests that each send a command at once (a barrier), as concurrent page clicks do."""
        barrier, ids, failures = threading.Barrier(threads), [], []

        def click() -> None:
            barrier.wait()
            try:
                ids.append(str(send_command(charge_point, "pause", user=operator).id))
            except CommandRefused as exc:
                failures.append(exc.reason)

        workers = [threading.Thread(target=click) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert not failures, failures
        return ids

    before = proxy.connections_seen
    first_burst = await sync_to_async(command_burst, thread_sensitive=False)(6)
    assert proxy.connections_seen - before == one_producer
    second_burst = await sync_to_async(command_burst, thread_sensitive=False)(6)
    acknowledgement = {"id": str(uuid.uuid4()), "event": "acknowledged", "charge_point": "cp-1"}
    await sync_to_async(publish_alert, thread_sensitive=False)(acknowledgement)
    assert proxy.connections_seen - before == one_producer

    sent = {CommandMessage.from_json(m.value).id for m in await read_all(commands_topic())}
    assert sent == set(first_burst + second_burst) and len(sent) == 12
    alerts = [orjson.loads(m.value) for m in await read_all(alerts_topic()) if m.key == b"cp-1"]
    assert alerts == [acknowledgement]


@pytest.mark.django_db
def test_a_broker_outage_fails_commands_in_time_and_the_first_command_after_it_is_sent(
    kafka: dict, broker: Broker, charge_point: ChargePoint, operator: User
) -> None:
    async_to_sync(ensure_topics)([commands_topic()], partitions=1)
    before = send_command(charge_point, "pause", user=operator)
    assert published_command_ids(commands_topic()) == [str(before.id)]

    broker.stop()
    # The connected producer does not get an answer: a timeout, and the command may still arrive if
    # the broker comes back soon. Once it gives that up, a new producer finds no broker: "not sent".
    during = [refused_in_time(charge_point, operator)]
    assert during[0].reason.startswith("Kafka did not confirm the command within")
    deadline = time.monotonic() + OUTAGE_GIVE_UP_S
    while not during[-1].reason.startswith("could not send the command to Kafka (KafkaConnectionError: "):
        assert time.monotonic() < deadline, f"still {during[-1].reason!r} after {OUTAGE_GIVE_UP_S} s"
        during.append(refused_in_time(charge_point, operator))

    broker.start()  # in-memory storage: the topic is gone with the old broker, made again
    async_to_sync(ensure_topics)([commands_topic()], partitions=1)
    after = send_command(charge_point, "pause", user=operator)
    assert Command.objects.get(id=after.id).status == CommandStatus.PENDING
    assert published_command_ids(commands_topic()) == [str(after.id)]


@pytest.mark.django_db(transaction=True)
async def test_a_command_that_timed_out_arrives_if_at_all_before_the_next_one(
    kafka: dict, proxied_broker: TcpProxy, charge_point: ChargePoint, operator: User
) -> None:
    """The network to the broker breaks and comes back: the charger must end with the operator's
    last word, so a command that timed out (and may still arrive) never arrives after a later one."""
    proxy = proxied_broker
    await ensure_topics([commands_topic()], partitions=1)
    first = await sync_to_async(send_command, thread_sensitive=False)(charge_point, "pause", user=operator)
    await proxy.cut()
    timed_out = await sync_to_async(refused_in_time, thread_sensitive=False)(charge_point, operator)
    assert timed_out.reason.startswith("Kafka did not confirm the command within")
    await proxy.restore()
    last = await sync_to_async(send_command, thread_sensitive=False)(
        charge_point, "set_current_limit", 10.0, user=operator
    )

    published = [CommandMessage.from_json(m.value).id for m in await read_all(commands_topic())]
    assert published in (
        [str(first.id), str(last.id)],
        [str(first.id), str(timed_out.command.id), str(last.id)],
    ), published


@pytest.mark.django_db
def test_a_changed_bootstrap_setting_sends_to_the_new_broker(
    kafka: dict, broker: Broker, charge_point: ChargePoint, operator: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_broker, own_broker = kafka["KAFKA_BOOTSTRAP_SERVERS"], broker.bootstrap
    sent: dict[str, list[str]] = {session_broker: [], own_broker: []}
    for bootstrap in (own_broker, session_broker, own_broker):
        monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        async_to_sync(ensure_topics)([commands_topic()], partitions=1)
        sent[bootstrap].append(str(send_command(charge_point, "pause", user=operator).id))
    for bootstrap, ids in sent.items():
        monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        assert published_command_ids(commands_topic()) == ids, f"on {bootstrap}"


# A web process in miniature: send, wait for the test's word (the broker is then gone), send again
# (that one times out, and its producer, replaced, would flush for up to STOP_TIMEOUT_S), exit.
EXITING_PROCESS = """
import sys, django
django.setup()
from gateway.kafka import web_producer
web_producer.send(sys.argv[1], b"before", key=b"cp-1", timeout_s=10)
print("sent", flush=True)
sys.stdin.readline()
try:
    web_producer.send(sys.argv[1], b"during", key=b"cp-1", timeout_s=1)
except TimeoutError:
    print("timed out", flush=True)
"""


def test_the_process_exits_promptly_with_a_send_still_pending_on_a_broker_that_is_gone(
    kafka: dict, broker: Broker, tmp_path: Path
) -> None:
    topic = f"test.exit.{uuid.uuid4().hex[:8]}"
    async_to_sync(ensure_topics)([topic], partitions=1)
    env = process_env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="evdash.settings",
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        KAFKA_ENABLE_IDEMPOTENCE="0",
        PYTHONWARNINGS="default",  # an unclosed producer or a pending task would say so on stderr
    )
    process = subprocess.Popen(
        [sys.executable, "-c", EXITING_PROCESS, topic],
        cwd=settings.BASE_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "sent\n", process.stderr
        broker.stop()
        started = time.monotonic()
        stdout, stderr = process.communicate("go\n", timeout=60)
        exited_in_s = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert (process.returncode, stdout) == (0, "timed out\n"), stderr
    # The 1 s send, then at most CLOSE_TIMEOUT_S (3 s) for the producers: not the 20 s a replaced
    # producer may flush for, and no hang.
    assert exited_in_s < 1 + web_producer.CLOSE_TIMEOUT_S + 6, f"exit took {exited_in_s:.1f} s; {stderr}"
    for trouble in ("Traceback", "Unclosed", "Task was destroyed", "Exception ignored"):
        assert trouble not in stderr, stderr


def test_the_sasl_password_never_reaches_the_logs(
    kafka: dict, broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SASL client against a broker without SASL fails; nothing logged on the way, at any level, nor
    the error the caller gets, carries the password."""
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "api-key",
        "KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }.items():
        monkeypatch.setitem(settings.EVDASH, name, value)
    with contextlib.ExitStack() as debug_everywhere:  # settings.LOGGING holds these at INFO / WARNING
        for logger in (None, "gateway", "aiokafka"):
            debug_everywhere.enter_context(caplog.at_level(logging.DEBUG, logger=logger))
        with pytest.raises((KafkaError, OSError, TimeoutError)) as failed:
            web_producer.send(f"test.sasl.{uuid.uuid4().hex[:8]}", b"{}", key=b"cp-1", timeout_s=3)
        web_producer.close()
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert SASL_PASSWORD not in caplog.text
    assert SASL_PASSWORD not in repr(failed.value) and SASL_PASSWORD not in str(failed.value)
