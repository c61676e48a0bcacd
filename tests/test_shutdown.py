"""runpoller and runconsumer as real processes: on SIGTERM or SIGINT they flush, commit and exit 0 in time.

Each process runs on its own SQLite (EVDASH_VAR_DIR), the session's embedded Tansu broker and
simulated chargers in this process; runconsumer pushes through Redis, as it must on its own.
The poller gets its signal while a read of a hung charger is outstanding: that poll finishes
(times out), and its record is flushed to Kafka with the rest before the process exits.
"""

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from asgiref.sync import async_to_sync

from gateway.kafka.config import client_options
from gateway.kafka.topics import ensure_topics
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.services import STOP_WITHIN_S
from gateway.simulator.fleet import SimulatorFleet
from tests.faults import ThreadedHungCharger
from tests.processes import Service, create_charge_points, process_env, wait_until

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
REDIS_DB = 14  # a database of its own: nothing else listens to the groups this consumer pushes to
RECORDS_BEFORE_SIGNAL = 12
POLLER_STOPPED = re.compile(r"poller stopped: (\d+) records published, (\d+) records sent, (\d+) dropped, (\d+) unsent")
CONSUMER_STOPPED = re.compile(r"live consumer stopped: (\d+) records handled")


@pytest.fixture
def chargers() -> Iterator[SimulatorFleet]:
    with SimulatorFleet(GENERIC, 2, base_port=0, seed=11).run_in_thread() as fleet:
        yield fleet


@pytest.fixture
def hung() -> Iterator[ThreadedHungCharger]:
    with closing(ThreadedHungCharger()) as charger:
        yield charger


@pytest.fixture
def service_env(tmp_path: Path, kafka: dict, chargers: SimulatorFleet, hung: ThreadedHungCharger) -> dict[str, str]:
    """Environment of both services: own SQLite with three charge points, the test broker, Redis."""
    env = process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_CONSUMER_GROUP=kafka["CONSUMER_GROUP"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        EVDASH_MODBUS_TIMEOUT_S="1",
        EVDASH_RECONNECT_BACKOFF_MAX_S="1",
        REDIS_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
    )
    create_charge_points(env, [sim.port for sim in chargers.charge_points] + [hung.port])
    return env


async def committed_and_end_offsets(topic: str, group: str) -> tuple[int, int]:
    """The group's committed offsets and the topic's end offsets, each summed over partitions."""
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **client_options())
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"topic {topic} has no partitions"
        committed = [await consumer.committed(tp) for tp in partitions]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(c or 0 for c in committed), sum(ends.values())


async def start_group_at_zero(topic: str, group: str) -> None:
    """Create the topic and commit offset 0 for the group, so "committed" counts what it handled."""
    await ensure_topics([topic])
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **client_options())
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"topic {topic} was not created"
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


async def read_all(topic: str) -> list[bytes]:
    """Every message of the topic, from the beginning, by a reader outside any group."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **client_options())
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read the topic to its end"
            batches = await consumer.getmany(timeout_ms=500)
            values += [message.value for messages in batches.values() for message in messages]
    finally:
        await consumer.stop()
    return values


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_services_flush_commit_and_exit_zero_on_signal(
    signum: int, service_env: dict[str, str], kafka: dict, hung: ThreadedHungCharger, tmp_path: Path
) -> None:
    import json

    topic, group = kafka["TELEMETRY_TOPIC"], kafka["CONSUMER_GROUP"]
    async_to_sync(start_group_at_zero)(topic, group)
    consumer = Service("runconsumer", service_env, tmp_path / "runconsumer.log")
    poller = Service("runpoller", service_env, tmp_path / "runpoller.log")
    services = [consumer, poller]
    try:

        def flowing() -> bool:
            committed, end = async_to_sync(committed_and_end_offsets)(topic, group)
            return end >= RECORDS_BEFORE_SIGNAL and committed > 0

        wait_until(flowing, 60, "records to reach Kafka and the consumer to commit some", *services)

        # The consumer stops while the poller keeps producing: it commits what it handled.
        code, consumer_s = consumer.stop(signum)
        output = consumer.output()
        assert code == 0, output[-3000:]
        assert consumer_s <= STOP_WITHIN_S, f"runconsumer took {consumer_s:.1f} s to stop"
        [handled] = [int(n) for n in CONSUMER_STOPPED.findall(output)]
        committed, _ = async_to_sync(committed_and_end_offsets)(topic, group)
        assert committed == handled, output[-3000:]
        assert handled >= 1

        # The poller stops while a poll is in flight: everything it published reaches Kafka.
        requests = hung.requests()
        wait_until(lambda: hung.requests() > requests, 10, "a read sent to the hung charger", poller)
        code, poller_s = poller.stop(signum)
        output = poller.output()
        assert code == 0, output[-3000:]
        assert poller_s <= STOP_WITHIN_S, f"runpoller took {poller_s:.1f} s to stop"
        [(published, sent, dropped, unsent)] = [tuple(map(int, m)) for m in POLLER_STOPPED.findall(output)]
        assert (sent, dropped, unsent) == (published, 0, 0), output[-3000:]
        records = [json.loads(value) for value in async_to_sync(read_all)(topic)]
        assert len(records) == published >= RECORDS_BEFORE_SIGNAL
        for slug in ("cp-0", "cp-1", "cp-2"):
            seqs = [r["seq"] for r in records if r["charge_point"] == slug]
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"{slug}: records lost or repeated"
        # One offline record per read the hung charger received, the one in flight at the signal included.
        assert len([r for r in records if r["charge_point"] == "cp-2"]) == hung.requests()
        for service in services:
            assert "Traceback" not in service.output(), service.output()[-3000:]
        print(
            f"{signal.Signals(signum).name}: runconsumer stopped in {consumer_s:.2f} s, runpoller in {poller_s:.2f} s"
        )
    finally:
        for service in services:
            service.kill()


async def test_a_stop_watch_sleeps_its_time_wakes_at_once_on_stop_and_leaves_no_task() -> None:
    from gateway.runtime import StopWatch

    stop = asyncio.Event()
    watch = StopWatch(stop)
    started = time.monotonic()
    assert await watch.wait(0.05) is False
    assert time.monotonic() - started >= 0.045
    assert await watch.wait(-1) is False  # a deadline already past: no wait, not stopped
    sleeping = asyncio.create_task(watch.wait(30))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(sleeping, 2) is True  # woken by stop, not after 30 s
    assert await watch.wait(30) is True  # already stopped: returns at once
    watch.close()
    await asyncio.sleep(0)
    assert {task for task in asyncio.all_tasks() if task is not asyncio.current_task()} == set()
