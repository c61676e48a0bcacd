"""At most once across a poller crash: kill -9 between the write and the result, restart, redeliver.

A real `manage.py runpoller` (its own SQLite, outbox and command journal in the test's tmp dir)
polls a simulated charger in this process whose profile's set_current_limit settles for
SETTLE_S: the result is published only that long after the write. The poller is killed (kill -9)
once the simulator took the write. Restarted, it reads the same Kafka message again (its offset
is held until the command expired and had time for its result) and finds it claimed in its
journal: the result is "failed interrupted", and the charger was written exactly once.
A command that finished before a restart and is published again gets its stored result again,
without a second write.
"""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from django.conf import settings

from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.runner import INTERRUPTED_REASON
from gateway.kafka.config import producer_options
from gateway.kafka.topics import command_results_topic, commands_topic, ensure_topics
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.server import SimulatedChargePoint
from tests.kafka_read import read_all
from tests.processes import Service, create_charge_points, manage, process_env, wait_until_async

pytestmark = pytest.mark.timeout(150)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
POLLER_ID = "restart-test"
SETTLE_S = 8.0  # the result comes this long after the write: the window the kill lands in
LIMIT_REGISTER = GENERIC.command("set_current_limit").register
START_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 60.0


@pytest.fixture
def charger() -> Iterator[SimulatedChargePoint]:
    with SimulatorFleet(GENERIC, 1, base_port=0, seed=7).run_in_thread() as fleet:
        yield fleet.charge_points[0]


@pytest.fixture
def poller_env(tmp_path: Path, kafka: dict, charger: SimulatedChargePoint) -> dict[str, str]:
    """runpoller's environment: own database with cp-0 (generic profile, limit settling SETTLE_S), the test's topics."""
    env = process_env(
        tmp_path,
        EVDASH_POLLER_ID=POLLER_ID,
        KAFKA_BOOTSTRAP_SERVERS=settings.EVDASH["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_COMMANDS_TOPIC=kafka["COMMANDS_TOPIC"],
        EVDASH_COMMAND_RESULTS_TOPIC=kafka["COMMAND_RESULTS_TOPIC"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        EVDASH_MODBUS_TIMEOUT_S="1",
    )
    create_charge_points(env, [charger.port])
    manage(
        [
            "shell",
            "-c",
            "from gateway.models import DeviceProfile; p = DeviceProfile.objects.get(slug='generic-ev-charger'); "
            f"p.commands = [dict(c, settle_s={SETTLE_S}) if c['action'] == 'set_current_limit' else c "
            "for c in p.commands]; p.save()",
        ],
        env,
    )
    return env


def limit_command(value_a: float) -> CommandMessage:
    now = datetime.now(UTC)
    return CommandMessage(
        id=str(uuid.uuid4()),
        charge_point="cp-0",
        site="depot",
        action="set_current_limit",
        value=value_a,
        user="operator",
        created_at=now,
        expires_at=now + timedelta(seconds=30),
    )


async def send(command: CommandMessage) -> None:
    """Publish a command as the server does: to the commands topic, keyed by charge point."""
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(commands_topic(), command.to_json(), key=command.key)
    finally:
        await producer.stop()


async def results_of(command_id: str) -> list[CommandResult]:
    return [
        result
        for result in (CommandResult.from_json(m.value) for m in await read_all(command_results_topic()))
        if result.id == command_id
    ]


def writes_of(charger: SimulatedChargePoint, value_a: float) -> int:
    return sum(1 for w in charger.last_writes if w.register == LIMIT_REGISTER and w.value == pytest.approx(value_a))


def start_poller(env: dict[str, str], tmp_path: Path) -> Service:
    return Service("runpoller", env, tmp_path / "runpoller.log", "--output", "kafka")


async def wait_taking_commands(poller: Service, starts: int) -> None:
    """Until the poller's `starts`-th run polls cp-0 and takes commands (the log is shared by the runs)."""
    await wait_until_async(
        lambda: (
            poller.output().count("taking commands from Kafka topic") >= starts
            and poller.output().count("polling cp-0") >= starts
        ),
        START_TIMEOUT_S,
        "the poller polling and taking commands",
        poller,
    )


async def test_a_command_interrupted_by_kill_9_is_not_written_again_after_the_restart(
    poller_env: dict[str, str], charger: SimulatedChargePoint, tmp_path: Path
) -> None:
    await ensure_topics([commands_topic(), command_results_topic()])
    poller = start_poller(poller_env, tmp_path)
    try:
        await wait_taking_commands(poller, 1)
        interrupted = limit_command(10.0)
        await send(interrupted)
        await wait_until_async(lambda: writes_of(charger, 10.0) == 1, 20, "the write of 10 A", poller)
        poller.kill()  # kill -9 within the settle time: written, claimed, no result yet
        assert f"command {interrupted.id} on cp-0" not in poller.output()
        assert await results_of(interrupted.id) == []

        poller = start_poller(poller_env, tmp_path)
        await wait_taking_commands(poller, 2)
        # The same Kafka message again (its offset was not committed), answered from the journal.
        await wait_until_async(
            lambda: "the poller restarted after claiming it" in poller.output(),
            RESULT_TIMEOUT_S,
            "the interrupted result",
            poller,
        )
        results = await _results_within(interrupted.id, 1)
        assert [(r.status, r.reason_code, r.reason, r.poller) for r in results] == [
            ("failed", "interrupted", INTERRUPTED_REASON, POLLER_ID)
        ]
        assert writes_of(charger, 10.0) == 1
        assert sum(1 for r in charger.requests_received if r.write) == 1  # nothing else written either

        # A command that finished, published again after a restart: its result again, no write.
        applied = limit_command(12.0)
        await send(applied)
        (first,) = await _results_within(applied.id, 1)
        assert (first.status, first.read_back) == ("applied", pytest.approx(12.0, abs=0.05))
        code, _took_s = poller.stop()
        assert code == 0, poller.output()[-3000:]
        poller.kill()  # closes the log file
        poller = start_poller(poller_env, tmp_path)
        await wait_taking_commands(poller, 3)
        await send(applied)
        again = await _results_within(applied.id, 2)
        assert again[1].to_json() == first.to_json()
        assert writes_of(charger, 12.0) == 1
        assert writes_of(charger, 10.0) == 1
        code, _took_s = poller.stop()
        assert code == 0, poller.output()[-3000:]
    finally:
        poller.kill()


async def _results_within(command_id: str, count: int) -> list[CommandResult]:
    """The command's results once there are `count` of them."""
    deadline = asyncio.get_running_loop().time() + RESULT_TIMEOUT_S
    while len(results := await results_of(command_id)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(results)} of {count} results of {command_id}"
        await asyncio.sleep(0.2)
    return results
