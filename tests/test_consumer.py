"""The consumer against the real (Tansu) broker: hostile and poison messages are dead-lettered, never fatal.

Every test here produces its messages first, then runs the consumer from the earliest offset
with the product's own sinks (latest state in the database, push to the channel layer).
"""

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from gateway.kafka.config import client_options, producer_options
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.topics import dead_letter_topic, ensure_topics
from gateway.live.push import push_telemetry
from gateway.models import LatestTelemetry
from gateway.runtime import Backoff
from gateway.sinks import live_consumer
from gateway.storage import store_latest
from gateway.telemetry import Record, build_record, encode_record
from tests.conftest import free_port, make_charge_point, wait_for, within
from tests.kafka_read import headers_of, read_all

pytestmark = pytest.mark.django_db(transaction=True)

# Hostile values that pass no schema: each once made json.loads raise something other than
# JSONDecodeError (ValueError beyond int_max_str_digits, RecursionError, UnicodeDecodeError), which
# used to end the consumer task without a word. orjson names each of them in its JSONDecodeError.
HUGE_INTEGER = b'{"seq": ' + b"9" * 5000 + b"}"
DEEP_NESTING = b"[" * 100_000 + b"]" * 100_000
NOT_UTF8 = b'{"charge_point": "\x80"}'


def record(slug: str, seq: int) -> Record:
    return build_record(charge_point=slug, site="test-site", profile="generic-ev-charger", seq=seq, fields=None)


def impossible_date_record() -> bytes:
    wrong = record("cp-a", 99) | {"ts": "2026-02-30T12:00:00.000Z"}  # matches the schema's pattern
    return encode_record(wrong)


async def produce(topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def committed_offset(kafka: dict, topic: str) -> int | None:
    check = AIOKafkaConsumer(group_id=kafka["CONSUMER_GROUP"], enable_auto_commit=False, **client_options())
    await check.start()
    try:
        return await check.committed(TopicPartition(topic, 0))
    finally:
        await check.stop()


async def latest_seqs() -> dict[str, int]:
    return {
        row.charge_point.slug: row.record["seq"]
        async for row in LatestTelemetry.objects.select_related("charge_point").all()
    }


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The sinks store through sync_to_async's thread: close its connection before the database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
async def topics(kafka) -> tuple[str, str]:
    """This test's telemetry topic and its dead-letter topic (one partition: offsets are exact)."""
    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic, dead_letter_topic()], partitions=1)
    return topic, dead_letter_topic()


class RefuseChargePoint:
    """A sink that fails for one charge point's records, as a storage that rejects them would."""

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.calls_with_it = 0

    async def __call__(self, records: list[Record]) -> None:
        if any(r["charge_point"] == self.slug for r in records):
            self.calls_with_it += 1
            raise RuntimeError(f"storage refused {self.slug}")


async def test_hostile_messages_are_dead_lettered_with_the_reason_and_the_consumer_lives_on(
    kafka, topics, site, generic_profile, caplog
) -> None:
    topic, dlq = topics
    assert dlq == f"{topic}.dlq"
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    hostile = {
        1: (HUGE_INTEGER, "InvalidRecord: not JSON: JSONDecodeError: number is infinity when parsed as double"),
        2: (DEEP_NESTING, "InvalidRecord: not JSON: JSONDecodeError: depth limit exceeded"),
        3: (NOT_UTF8, "InvalidRecord: not JSON: JSONDecodeError: str is not valid UTF-8"),
        4: (impossible_date_record(), "InvalidRecord: ts: '2026-02-30T12:00:00.000Z' is not a real UTC time"),
    }
    messages = [(b"cp-a", encode_record(record("cp-a", 1)))]
    messages += [(f"bad-{offset}".encode(), value) for offset, (value, _reason) in hostile.items()]
    messages += [(b"cp-a", encode_record(record("cp-a", 2)))]
    await produce(topic, messages)

    consumer = live_consumer(topic, auto_offset_reset="earliest")
    stop = asyncio.Event()
    caplog.set_level(logging.ERROR, logger="gateway.kafka.consumer")
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: consumer.handled + consumer.dead_lettered == 6 or task.done(), what="6 messages")
        assert not task.done(), f"the consumer task ended: {task.exception()!r}"
        assert (consumer.handled, consumer.skipped, consumer.failed, consumer.dead_lettered) == (2, 4, 0, 4)
        # Still alive and consuming: a later valid record is handled too.
        await produce(topic, [(b"cp-a", encode_record(record("cp-a", 3)))])
        await wait_for(lambda: consumer.handled == 3, what="the record after the hostile ones")
    finally:
        stop.set()
        await within(task)

    assert await latest_seqs() == {"cp-a": 3}
    assert await committed_offset(kafka, topic) == 7
    letters = await read_all(dlq)
    assert [m.key for m in letters] == [b"bad-1", b"bad-2", b"bad-3", b"bad-4"]
    for letter in letters:
        offset = int(letter.key.removeprefix(b"bad-"))
        value, reason = hostile[offset]
        headers = headers_of(letter)
        assert letter.value == value
        assert headers["evdash.reason"].startswith(reason), headers["evdash.reason"]
        assert (headers["evdash.stage"], headers["evdash.topic"]) == ("decode", topic)
        assert (headers["evdash.partition"], headers["evdash.offset"]) == ("0", str(offset))
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dead-lettered")]
    assert [line.split(" (key")[0] for line in logged] == [f"dead-lettered {topic}[0]@{n}" for n in (1, 2, 3, 4)]


async def test_a_poison_record_is_retried_a_bounded_number_of_times_then_dead_lettered(
    kafka, topics, site, generic_profile
) -> None:
    topic, dlq = topics
    for port, slug in enumerate(("cp-a", "cp-b", "cp-poison"), start=1502):
        await sync_to_async(make_charge_point)(site, generic_profile, slug, port)
    batch = [
        (slug.encode(), encode_record(record(slug, seq)))
        for slug, seq in [("cp-a", 1), ("cp-poison", 1), ("cp-a", 2), ("cp-b", 1)]
    ]
    await produce(topic, batch)

    refuse = RefuseChargePoint("cp-poison")
    consumer = TelemetryConsumer(
        topic,
        auto_offset_reset="earliest",
        sinks=[refuse, store_latest, push_telemetry],  # refused before it is stored
        attempts=3,
        retry_backoff=Backoff(first_s=0.05, max_s=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: consumer.handled + consumer.dead_lettered == 4 or task.done(), what="4 records")
        assert not task.done(), f"the consumer task ended: {task.exception()!r}"
        assert (consumer.handled, consumer.failed, consumer.dead_lettered) == (3, 1, 1)
    finally:
        stop.set()
        await within(task)

    # Bounded: three tries of the batch that holds it, then one on its own; never again.
    assert refuse.calls_with_it == 4
    # The rest of the batch was stored, and everything is committed: a restart does not replay it.
    assert await latest_seqs() == {"cp-a": 2, "cp-b": 1}
    assert await committed_offset(kafka, topic) == 4
    [letter] = await read_all(dlq)
    headers = headers_of(letter)
    assert (letter.key, letter.value) == batch[1]
    assert headers["evdash.reason"] == "RuntimeError: storage refused cp-poison"
    assert (headers["evdash.stage"], headers["evdash.partition"], headers["evdash.offset"]) == ("handle", "0", "1")


async def test_stop_during_a_retry_wait_returns_promptly_and_commits_nothing(
    kafka, topics, site, generic_profile
) -> None:
    topic, dlq = topics
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-poison", 1502)
    await produce(topic, [(b"cp-poison", encode_record(record("cp-poison", 1)))])

    refuse = RefuseChargePoint("cp-poison")
    # A long retry wait: stop must cut it short.
    consumer = TelemetryConsumer(
        topic, auto_offset_reset="earliest", sinks=[refuse], attempts=5, retry_backoff=Backoff(first_s=60.0)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: refuse.calls_with_it == 1, what="the first failed attempt")
    finally:
        started = time.monotonic()
        stop.set()
        await within(task, 30)
    stopped_in_s = time.monotonic() - started
    # consumer.stop() leaves the group (a request to the broker); the 60 s wait must not count.
    assert stopped_in_s < 5.0, f"stop took {stopped_in_s:.1f} s during a 60 s retry wait"
    assert refuse.calls_with_it == 1
    assert (consumer.handled, consumer.dead_lettered) == (0, 0)
    assert await committed_offset(kafka, topic) is None
    assert await read_all(dlq) == []


BOGUS_PROTOCOL_ERROR = "ImproperlyConfigured: Unknown KAFKA_SECURITY_PROTOCOL 'BOGUS'."


def failing_consumer_environment(tmp_path) -> dict[str, str]:
    """A process environment whose Kafka settings make the consumer fail (not a broker outage)."""
    return os.environ | {
        "DJANGO_SETTINGS_MODULE": "evdash.settings",
        "EVDASH_VAR_DIR": str(tmp_path),
        "KAFKA_SECURITY_PROTOCOL": "BOGUS",
        "PYTHONUNBUFFERED": "1",
    }


def test_runconsumer_says_why_and_exits_non_zero_when_the_consumer_fails(tmp_path) -> None:
    env = failing_consumer_environment(tmp_path) | {"REDIS_URL": "redis://127.0.0.1:6379/14"}
    result = subprocess.run(
        [sys.executable, "manage.py", "runconsumer", "-v", "1"],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the live telemetry consumer failed" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"CommandError: runconsumer failed: {BOGUS_PROTOCOL_ERROR}"


def test_the_demo_web_process_stops_and_says_so_when_its_consumer_fails(tmp_path) -> None:
    script = (
        "import django; django.setup(); from gateway.demo import serve_web_with_consumer; "
        f"serve_web_with_consumer('127.0.0.1', {free_port()})"
    )
    process = subprocess.run(
        [sys.executable, "-c", script],
        env=failing_consumer_environment(tmp_path),
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,  # before the fix daphne kept serving a dashboard without data: this timed out
    )
    assert process.returncode == 1, process.stderr[-2000:]
    assert "the live consumer failed (run_consumer logged why); stopping the demo" in process.stderr
    last_line = process.stderr.strip().splitlines()[-1]
    assert last_line.endswith(f"the live consumer failed: {BOGUS_PROTOCOL_ERROR}")


@pytest.mark.production
async def test_a_record_postgresql_cannot_store_is_dead_lettered_and_the_others_are_stored(
    kafka, topics, site, generic_profile
) -> None:
    # Valid JSON and valid against the schema, but PostgreSQL's jsonb refuses the NUL character:
    # a poison record for the real storage, not for a test sink.
    topic, dlq = topics
    for port, slug in enumerate(("cp-a", "cp-nul"), start=1502):
        await sync_to_async(make_charge_point)(site, generic_profile, slug, port)
    nul = record("cp-nul", 1) | {"error": "vendor text\u0000with a NUL"}
    batch = [(b"cp-a", encode_record(record("cp-a", 1))), (b"cp-nul", encode_record(nul))]
    batch.append((b"cp-a", encode_record(record("cp-a", 2))))
    await produce(topic, batch)

    consumer = live_consumer(
        topic, auto_offset_reset="earliest", attempts=2, retry_backoff=Backoff(first_s=0.05, max_s=0.2)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: consumer.handled + consumer.dead_lettered == 3 or task.done(), what="3 records")
        assert not task.done(), f"the consumer task ended: {task.exception()!r}"
        assert (consumer.handled, consumer.failed, consumer.dead_lettered) == (2, 1, 1)
    finally:
        stop.set()
        await within(task)
    assert await latest_seqs() == {"cp-a": 2}
    assert await committed_offset(kafka, topic) == 3
    [letter] = await read_all(dlq)
    headers = headers_of(letter)
    assert (letter.key, letter.value) == batch[1]
    assert headers["evdash.reason"].startswith("DataError: unsupported Unicode escape sequence"), headers
    assert (headers["evdash.stage"], headers["evdash.offset"]) == ("handle", "1")


def message_at(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord("t", 0, offset, 0, 0, b"cp-a", value, None, 4, len(value), ())


async def test_handle_batch_hands_the_decoded_batch_to_each_sink_in_one_call() -> None:
    calls: list[tuple[str, list[int]]] = []

    def recording(name: str):
        async def sink(records: list[Record]) -> None:
            calls.append((name, [r["seq"] for r in records]))

        return sink

    consumer = TelemetryConsumer("t", sinks=[recording("store"), recording("push")])
    await consumer.handle_batch([message_at(n, encode_record(record("cp-a", n))) for n in (1, 2, 3)])
    # One call per sink per batch, in order: the push coalesces per batch, so it must see the batch.
    assert calls == [("store", [1, 2, 3]), ("push", [1, 2, 3])]
    assert consumer.handled == 3
    # A message to dead-letter needs the producer of run(): outside it, a clear error, not a silent loss.
    with pytest.raises(RuntimeError, match=r"cannot dead-letter t@4 outside run\(\): .*not JSON"):
        await consumer.handle_batch([message_at(4, b"garbage")])
