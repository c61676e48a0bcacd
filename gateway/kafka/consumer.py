"""Consume from Kafka: decode, hand each batch to the sinks it was given, dead-letter what fails.

The consumer knows Kafka and nothing of what the sinks do: the service assembles them
(gateway/sinks.py: latest state, alerts and live push in one group; history and sessions in
another). The same machinery serves the command results (gateway/commands/results.py): it takes
the decoder of its messages (`decode`, telemetry records by default) and keeps its batching,
retries and dead-lettering for both.

Delivery is at least once: a batch is committed only when each of its messages was handled by
every sink or dead-lettered, so a crash, a rebalance or a stop replays uncommitted messages and
never loses one. Sinks must therefore tolerate a record twice (the latest-state upsert keeps the
newest by (ts, seq); the dashboard redraws).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from gateway.conf import setting
from gateway.kafka.config import client_options, producer_options
from gateway.kafka.topics import dead_letter_topic
from gateway.runtime import Backoff
from gateway.telemetry import decode_record

logger = logging.getLogger(__name__)

Sink = Callable[[list[Any]], Awaitable[object]]  # takes a batch of decoded messages (telemetry records)
Decode = Callable[[bytes | None], Any]  # a message's value -> what the sinks take; raises if it is not one
# Told of every batch the sinks took: its messages, their decoded records and how long the sinks
# took (seconds). Metrics and the pipeline page watch the consumer through these; they must be cheap
# and must not raise (a failing observer is logged, never the batch's problem).
BatchObserver = Callable[[Sequence[ConsumerRecord], list[Any], float], None]

# A dead letter keeps the original key and value; these headers say why and where it came from.
REASON_HEADER = "evdash.reason"
STAGE_HEADER = "evdash.stage"  # "decode": not a telemetry record; "handle": a sink kept failing
TOPIC_HEADER = "evdash.topic"
PARTITION_HEADER = "evdash.partition"
OFFSET_HEADER = "evdash.offset"
VALUE_DROPPED_HEADER = "evdash.value_dropped"  # present when the value was too large to copy
REASON_MAX_CHARS = 500

# Tries of a failing batch before its records are tried one by one (and the bad ones dead-lettered).
HANDLE_ATTEMPTS = 4
# Latency before batching: getmany() returns as soon as any record is fetched (up to max_batch of
# them), so a batch is whatever arrived since the last one; nothing waits for a batch to fill.
# A fetch that finds no data waits FETCH_MAX_WAIT_MS on the broker. Kafka answers such a fetch as
# soon as data arrives; Tansu (the embedded broker) does not, so there this wait is added to the
# hop: measured Kafka hop at 1,000 records/s, p50/p99 ~25/70 ms with 100 ms, ~4/15 ms with 10 ms.
# The price is up to 100 empty fetches per second per consumer while the topic is idle.
FETCH_MAX_WAIT_MS = 10
GETMANY_TIMEOUT_MS = 500


class _StopRequested(Exception):
    """Stop was set while a batch waited to be retried: leave it uncommitted for the next run."""


class TelemetryConsumer:
    """One member of the consumer group; run several to share the partitions.

    A batch the sinks refuse is retried `attempts` times with backoff (the waits honour stop). If
    it still fails, its records are handled one by one: those that go through are kept, each one
    that fails (a poison record) goes to the dead-letter topic with the reason in a header, and
    the batch is committed. A message that cannot be decoded goes there at once.
    """

    def __init__(
        self,
        topic: str,
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        max_batch: int = 500,
        sinks: Sequence[Sink],
        dead_letter_to: str | None = None,
        attempts: int = HANDLE_ATTEMPTS,
        retry_backoff: Backoff | None = None,
        decode: Decode = decode_record,
    ) -> None:
        self.topic = topic
        self.decode = decode
        self.group_id = group_id or setting("CONSUMER_GROUP")
        self.auto_offset_reset = auto_offset_reset
        self.max_batch = max_batch
        self.sinks = list(sinks)
        self.dead_letter_topic = dead_letter_to or dead_letter_topic()
        self.attempts = max(1, attempts)
        self.handled = 0  # records every sink accepted
        self.skipped = 0  # messages `decode` refused (dead-lettered, stage "decode")
        self.failed = 0  # records a sink kept refusing (dead-lettered, stage "handle")
        self.dead_lettered = 0
        self.assigned = asyncio.Event()
        # True once a fetch found the partitions drained (an empty fetch, or a batch handled up to
        # the broker's high watermark of its partitions): what the sinks hold is then as fresh as
        # the topic. False while catching up on a backlog, e.g. after a restart: a rule that judges
        # the age of data (the stale alert) must wait for it.
        self.caught_up = False
        # Messages behind the broker's high watermark per assigned partition, after the last fetch.
        self.lag_by_partition: dict[int, int] = {}
        self.batch_observers: list[BatchObserver] = []
        self._dead_letters: AIOKafkaProducer | None = None  # set while run() is connected
        self._reconnect = Backoff()
        self._retry = retry_backoff or Backoff(first_s=0.5, max_s=5.0)

    @property
    def connected(self) -> bool:
        """Connected to Kafka now (readiness probes read it)."""
        return self._dead_letters is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until stop is set, reconnecting after broker outages.

        Anything but a Kafka or network error is raised: the task fails loudly (run_consumer logs
        it and the commands exit non-zero) instead of leaving the dashboard silently without data.
        """
        while not stop.is_set():
            try:
                await self._consume(stop)
            except (KafkaError, OSError) as exc:
                logger.warning("Kafka consumer error (%s); reconnecting in %.1f s", exc, self._reconnect.peek_s())
                await self._reconnect.wait(stop)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            # A live dashboard: the broker answers an empty fetch after 10 ms (default 500).
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **client_options(),
        )
        dead_letters = AIOKafkaProducer(**producer_options())
        try:
            await consumer.start()
            await dead_letters.start()
            self._dead_letters = dead_letters
            self._reconnect.reset()
            logger.info("consuming %s as group %s", self.topic, self.group_id)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=GETMANY_TIMEOUT_MS, max_records=self.max_batch)
                if consumer.assignment():
                    self.assigned.set()
                if not batches:
                    assignment = consumer.assignment()
                    self.caught_up = bool(assignment)
                    self.lag_by_partition = {tp.partition: 0 for tp in assignment}
                    continue
                messages = [message for messages in batches.values() for message in messages]
                try:
                    await self.handle_batch(messages, stop)
                except _StopRequested:
                    logger.info("stopped while retrying a batch; it stays uncommitted and is consumed again next time")
                    return
                await consumer.commit()
                # Caught up when each partition's last message is the broker's last (its high watermark).
                lags = {
                    tp: max(0, (consumer.highwater(tp) or 0) - tp_messages[-1].offset - 1)
                    for tp, tp_messages in batches.items()
                }
                self.caught_up = not any(lags.values())
                assigned = {tp.partition for tp in consumer.assignment()}
                self.lag_by_partition = {
                    partition: lag for partition, lag in self.lag_by_partition.items() if partition in assigned
                } | {tp.partition: lag for tp, lag in lags.items()}
        finally:
            self._dead_letters = None
            self.caught_up = False
            await consumer.stop()
            await dead_letters.stop()

    async def handle_batch(self, messages: Sequence[ConsumerRecord], stop: asyncio.Event | None = None) -> None:
        """Decode a batch of Kafka messages and hand the records to the sinks; dead-letter what fails.

        run() calls it for each fetched batch; the benchmark and tests call it directly (a message
        that needs dead-lettering then needs run() to be connected). Raises _StopRequested if stop
        is set while a failing batch waits to be retried.
        """
        stop = stop or asyncio.Event()
        decoded: list[tuple[ConsumerRecord, Any]] = []
        for message in messages:
            try:
                decoded.append((message, self.decode(message.value)))
            except Exception as exc:  # whatever decoding raises is this message's problem
                self.skipped += 1
                await self._dead_letter(message, "decode", exc)
        if not decoded:
            return
        records = [record for _message, record in decoded]
        started = time.perf_counter()
        error = await self._deliver_with_retries(records, stop)
        if error is None:
            self.handled += len(records)
            self._tell_observers(messages, records, time.perf_counter() - started)
            return
        # Isolate the poison: one record at a time, so the rest of the batch is still handled.
        logger.warning("a batch of %d records kept failing (%s); handling them one by one", len(records), error)
        for message, record in decoded:
            try:
                await self._deliver([record])
            except Exception as exc:  # a sink's failure on one record is that record's problem
                self.failed += 1
                await self._dead_letter(message, "handle", exc)
            else:
                self.handled += 1

    def _tell_observers(self, messages: Sequence[ConsumerRecord], records: list[Any], duration_s: float) -> None:
        for observer in self.batch_observers:
            try:
                observer(messages, records, duration_s)
            except Exception:
                logger.exception("a batch observer failed; the batch itself was handled")

    async def _deliver(self, records: list[Any]) -> None:
        for sink in self.sinks:
            await sink(records)

    async def _deliver_with_retries(self, records: list[Any], stop: asyncio.Event) -> Exception | None:
        """None once every sink took the records; the last error after `attempts` failures."""
        self._retry.reset()
        for attempt in range(1, self.attempts + 1):
            try:
                await self._deliver(records)
                return None
            except Exception as exc:  # counted and retried; dead-lettered if it persists
                if attempt == self.attempts:
                    return exc
                logger.warning(
                    "could not handle %d records (attempt %d of %d: %s: %s); retrying in %.1f s",
                    len(records),
                    attempt,
                    self.attempts,
                    type(exc).__name__,
                    exc,
                    self._retry.peek_s(),
                )
                if await self._retry.wait(stop):
                    raise _StopRequested from exc
        return None  # not reached: the loop returns on the last attempt

    async def _dead_letter(self, message: ConsumerRecord, stage: str, exc: BaseException) -> None:
        """Copy the message to the dead-letter topic, key and value as they were, with the reason."""
        producer = self._dead_letters
        if producer is None:
            raise RuntimeError(f"cannot dead-letter {message.topic}@{message.offset} outside run(): {exc}") from exc
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > REASON_MAX_CHARS:
            reason = reason[: REASON_MAX_CHARS - 3] + "..."
        headers = [
            (REASON_HEADER, reason.encode()),
            (STAGE_HEADER, stage.encode()),
            (TOPIC_HEADER, message.topic.encode()),
            (PARTITION_HEADER, str(message.partition).encode()),
            (OFFSET_HEADER, str(message.offset).encode()),
        ]
        try:
            await producer.send_and_wait(self.dead_letter_topic, message.value, key=message.key, headers=headers)
        except MessageSizeTooLargeError:
            # Keep the evidence that fits: where it was and why; the value stays in the source topic.
            headers.append((VALUE_DROPPED_HEADER, b"1"))
            await producer.send_and_wait(self.dead_letter_topic, None, key=message.key, headers=headers)
        self.dead_lettered += 1
        logger.error(
            "dead-lettered %s[%d]@%d (key %r) to %s: %s",
            message.topic,
            message.partition,
            message.offset,
            message.key,
            self.dead_letter_topic,
            reason,
        )
