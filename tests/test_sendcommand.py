"""`manage.py sendcommand` as a real process against the embedded Kafka and a real runconsumer.

The test plays the poller: it reads evdash.commands and answers on evdash.command-results;
runconsumer stores the answer on the audit row, where sendcommand waits for it. The processes
share a SQLite database of this module's own.
"""

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from django.conf import settings

from gateway.choices import CommandAction
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.kafka.config import client_options, producer_options
from gateway.kafka.topics import ensure_topics
from gateway.management.commands.sendcommand import EXIT_FAILED, EXIT_PENDING, EXIT_REFUSED, EXIT_USAGE
from tests.conftest import free_port
from tests.processes import Service, manage, process_env, wait_until
from tests.test_command_service import RESUME_UNSUPPORTED

EXPIRY_S = 2  # short, so that the sweeper's no_answer comes within a test
REDIS_DB = 13  # a database of its own: nothing else listens to the groups runconsumer pushes to
# Site "depot"; cp-0 with the shipped generic profile, cp-1 with the test profile (no resume);
# alice without the permission, bob with it.
SETUP = f"""
from django.contrib.auth.models import Permission, User
from gateway.models import ChargePoint, DeviceProfile, Site
from tests.conftest import stored_profile
from tests.test_command_service import command_profile_spec
site = Site.objects.create(slug="depot", name="Depot")
profiles = [DeviceProfile.objects.get(slug="generic-ev-charger"), stored_profile(command_profile_spec())]
for slug, port, profile in zip(["cp-0", "cp-1"], [{free_port()}, {free_port()}], profiles):
    ChargePoint.objects.create(slug=slug, name=slug.upper(), site=site, host="127.0.0.1", port=port, profile=profile)
User.objects.create_user("alice", password="not-used-here")
bob = User.objects.create_user("bob", password="not-used-here")
bob.user_permissions.add(Permission.objects.get(codename="send_command"))
"""


@dataclass
class Cli:
    """The module's processes: their environment, their topics, and runconsumer."""

    env: dict[str, str]
    commands_topic: str
    results_topic: str
    consumer: Service


@pytest.fixture(scope="module")
def cli(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    tmp_path = tmp_path_factory.mktemp("sendcommand")
    suffix = uuid.uuid4().hex[:8]
    env = process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=f"test.telemetry.{suffix}",
        EVDASH_COMMANDS_TOPIC=f"test.commands.{suffix}",
        EVDASH_COMMAND_RESULTS_TOPIC=f"test.command-results.{suffix}",
        EVDASH_CONSUMER_GROUP=f"test-consumer-{suffix}",
        EVDASH_TOPIC_PARTITIONS="2",
        EVDASH_COMMAND_EXPIRY_S=str(EXPIRY_S),
        REDIS_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
        USER="tester",
        LOGNAME="tester",
    )
    manage(["migrate", "-v", "0"], env)
    manage(["shell", "-c", SETUP], env)
    consumer = Service("runconsumer", env, tmp_path / "runconsumer.log")
    try:
        wait_until(lambda: f"consuming test.command-results.{suffix}" in consumer.output(), 60, "runconsumer", consumer)
        yield Cli(env, f"test.commands.{suffix}", f"test.command-results.{suffix}", consumer)
        code, _seconds = consumer.stop()
        assert code == 0, consumer.output()[-3000:]
    finally:
        consumer.kill()


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


async def sendcommand(cli: Cli, *args: str) -> Outcome:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "sendcommand",
        *args,
        env=cli.env,
        cwd=settings.BASE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    return Outcome(process.returncode, stdout.decode(), stderr.decode())


@contextlib.asynccontextmanager
async def poller(cli: Cli, kafka: dict) -> AsyncIterator[list[CommandMessage]]:
    """A poller that applies every command sent from now on (read back: the value written); yields what it got."""
    await ensure_topics([cli.commands_topic, cli.results_topic])
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options())
    producer = AIOKafkaProducer(**producer_options())
    await consumer.start()
    await producer.start()
    received: list[CommandMessage] = []

    async def answer() -> None:
        while True:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    command = CommandMessage.from_json(message.value)
                    received.append(command)
                    read_back = 0.0 if command.action == CommandAction.PAUSE else command.value
                    result = CommandResult.applied(command, read_back=read_back, poller="test-poller")
                    await producer.send_and_wait(cli.results_topic, result.to_json(), key=result.key)

    try:
        await consumer.topics()
        partitions = [TopicPartition(cli.commands_topic, p) for p in consumer.partitions_for_topic(cli.commands_topic)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)  # resolve the end now, before any command is sent
        task = asyncio.create_task(answer())
        try:
            yield received
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await consumer.stop()
        await producer.stop()


async def test_an_applied_command_exits_zero_and_prints_its_result(cli: Cli, kafka: dict) -> None:
    async with poller(cli, kafka) as received:
        as_json = await sendcommand(cli, "cp-0", "set-current-limit", "10", "--json", "--wait", "60")
        assert as_json.code == 0, as_json.stderr
        shown = json.loads(as_json.stdout)
        assert {key: shown[key] for key in ("charge_point", "action", "value", "status", "read_back", "username")} == {
            "charge_point": "cp-0",
            "action": "set_current_limit",
            "value": 10.0,
            "status": "applied",
            "read_back": 10.0,
            "username": "cli:tester",
        }
        assert shown["latency_ms"] > 0 and shown["reason_code"] is None

        line = await sendcommand(cli, "cp-0", "pause", "--user", "bob", "--wait", "60")
        assert line.code == 0, line.stderr
        assert line.stdout.startswith("applied: pause to cp-0 by bob (")
        assert ", read back 0 in " in line.stdout
    assert [(c.id, c.action, c.value, c.user) for c in received] == [
        (shown["id"], "set_current_limit", 10.0, "cli:tester"),
        (received[1].id, "pause", None, "bob"),
    ]


async def test_without_a_poller_it_times_out_after_wait_or_fails_no_answer_after_the_expiry(cli: Cli) -> None:
    timed_out = await sendcommand(cli, "cp-0", "resume", "--wait", "0.5")
    assert timed_out.code == EXIT_PENDING, timed_out.stderr
    assert timed_out.stdout.startswith("pending: resume to cp-0 by cli:tester (")
    assert "no result within 0.5 s (timeout); the command is still pending" in timed_out.stderr

    # The default wait outlasts the expiry and the sweeper's grace: runconsumer fails it no_answer.
    unanswered = await sendcommand(cli, "cp-0", "resume", "--json")
    assert unanswered.code == EXIT_FAILED, unanswered.stderr
    shown = json.loads(unanswered.stdout)
    assert (shown["status"], shown["reason_code"], shown["reason"]) == (
        "failed",
        "no_answer",
        "no poller answered before the command expired",
    )
    assert "failed (no_answer): no poller answered before the command expired" in unanswered.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["cp-0", "pause", "--user", "alice"], EXIT_REFUSED, "refused (not_permitted): alice may not send commands"),
        (["cp-0", "set-current-limit", "40"], EXIT_REFUSED, "refused (out_of_range): 40 A is outside 6..32 A"),
        (["cp-1", "resume"], EXIT_REFUSED, f"refused (unsupported): {RESUME_UNSUPPORTED}"),
        (["cp-0", "set-current-limit"], EXIT_REFUSED, "refused (invalid): set_current_limit needs a value in A"),
        (["cp-9", "pause"], EXIT_REFUSED, "refused (invalid): no charge point 'cp-9'"),
        (["cp-0", "set-current-limit", "ten"], EXIT_USAGE, "VALUE must be a number of amperes, not 'ten'"),
        (["cp-0", "pause", "--user", "nobody"], EXIT_USAGE, "no user 'nobody'"),
        (["cp-0", "reboot"], EXIT_USAGE, "argument action: invalid choice: 'reboot'"),
    ],
    ids=[
        "not-permitted",
        "out-of-range",
        "unsupported",
        "missing-value",
        "unknown-cp",
        "bad-value",
        "no-user",
        "bad-action",
    ],
)
async def test_refusals_and_usage_errors_exit_non_zero_with_the_reason(
    cli: Cli, args: list[str], code: int, message: str
) -> None:
    outcome = await sendcommand(cli, *args, "--json")
    assert outcome.code == code, outcome.stderr
    assert message in outcome.stderr
    if code == EXIT_REFUSED:  # the refusal is audited: its row is printed
        shown = json.loads(outcome.stdout)
        assert shown["status"] == "failed"
        assert f"refused ({shown['reason_code']}): {shown['reason']}" in outcome.stderr


def test_the_help_documents_the_exit_statuses(cli: Cli) -> None:
    help_text = subprocess.run(
        [sys.executable, "manage.py", "sendcommand", "--help"],
        env=cli.env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    flat = " ".join(help_text.split())
    for status in ("0 applied", f"{EXIT_FAILED} failed", f"{EXIT_USAGE} usage error", f"{EXIT_REFUSED} refused"):
        assert status in flat
    assert f"{EXIT_PENDING} no result within --wait" in flat
