"""Publish telemetry records to Kafka, keyed by charge point, surviving broker outages."""

import asyncio
import collections
import itertools
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from gateway.kafka.config import producer_options
from gateway.runtime import Backoff
from gateway.telemetry import Record, encode_record

logger = logging.getLogger(__name__)

Entry = tuple[bytes, bytes]  # (key, value) of one buffered record
SEND_AT_MOST = 20_000  # records taken from the buffer per round of batches
# The client sends one batch per partition per request to a broker: at its default 16 KiB (~25
# records) a fleet of thousands waits on round trips. 900 KiB (under the brokers' usual 1 MiB
# message limit) carries ~1,300.
MAX_BATCH_BYTES = 900 * 1024
# A round waits this long for more records first: at a few hundred records a second, a round per
# record or two cost more CPU than the records themselves (bench/poller.py); 10 ms is far below
# the end-to-end latency budget.
LINGER_S = 0.01


class TelemetryPublisher:
    """Buffers records in memory and sends them in order; `publish` never blocks the poll loop.

    While the broker is unreachable records wait in a bounded buffer (oldest dropped first, and
    counted) and are sent once it is back. A record leaves the buffer only when the broker has
    acknowledged it (acks=all). Records go out as one batch per partition per round
    (create_batch/send_batch), not one send() each: per record that was most of the publish cost.

    Delivery is at least once. Without the idempotent producer (KAFKA_ENABLE_IDEMPOTENCE, which
    Tansu does not support) a record can be written twice, but only one that was in flight (handed
    to the client, not yet acknowledged) when the connection failed: the client or this buffer
    sends it again. Consumers tolerate that (see gateway.kafka.consumer).
    """

    def __init__(self, topic: str, *, buffer_size: int = 50_000) -> None:
        self.topic = topic
        self.buffer: collections.deque[Entry] = collections.deque()
        self.buffer_size = buffer_size
        self.sent = 0
        self.dropped = 0
        self.failed_sends = 0  # sends the broker did not acknowledge in time; the records stay buffered
        self._wakeup = asyncio.Event()
        self._abandon = asyncio.Event()  # set when stop() gives up flushing
        self._backoff = Backoff()
        self._pending: list[tuple[asyncio.Future, int]] = []  # batches handed to the client, with their sizes
        self._partitions: dict[bytes, int] = {}  # key -> partition, for the current partition count
        self._partition_count = 0
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def in_flight(self) -> int:
        """Records handed to the Kafka client and not acknowledged yet."""
        return sum(size for future, size in self._pending if not future.done())

    def publish(self, record: Record) -> None:
        if len(self.buffer) >= self.buffer_size:
            self.buffer.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning(
                    "Kafka buffer full (%d records): dropping the oldest telemetry; %d dropped so far",
                    self.buffer_size,
                    self.dropped,
                )
        self.buffer.append((record["charge_point"].encode(), encode_record(record)))
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-publisher")

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Send what is buffered (retrying up to the timeout), then close the producer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_timeout_s)
            except TimeoutError:
                logger.warning("gave up flushing %d telemetry records at shutdown", len(self.buffer))
                self._abandon.set()
                self._task.cancel()  # a send may be waiting on the broker
                await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        while True:
            if not self.buffer:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._closing:
                await asyncio.sleep(LINGER_S)
            try:
                producer = await self._connected_producer()
                await self._send_buffered(producer)
                self._backoff.reset()
            except (KafkaError, OSError) as exc:
                logger.warning(
                    "Kafka unavailable (%s); %d records buffered, retrying in %.1f s",
                    exc,
                    len(self.buffer),
                    self._backoff.peek_s(),
                )
                if await self._backoff.wait(self._abandon):
                    return

    async def _connected_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**(producer_options() | {"max_batch_size": MAX_BATCH_BYTES}))
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            logger.info("connected to Kafka, publishing to %s", self.topic)
        return self._producer

    async def _send_buffered(self, producer: AIOKafkaProducer) -> None:
        entries = list(itertools.islice(self.buffer, SEND_AT_MOST))
        by_partition: dict[int, list[Entry]] = {}
        partition_of = await self._partitioner(producer)
        for entry in entries:
            by_partition.setdefault(partition_of(entry[0]), []).append(entry)
        self._pending = []
        sent: list[list[Entry]] = []
        send_error: KafkaError | None = None
        try:
            for partition, records in by_partition.items():
                for chunk in self._batches(producer, records):
                    future = await producer.send_batch(chunk[0], self.topic, partition=partition)
                    self._pending.append((future, len(chunk[1])))
                    sent.append(chunk[1])
        except KafkaError as exc:  # e.g. no metadata while the broker is away
            send_error = exc
        # Even when a send failed part-way, learn the fate of what the client already holds: those
        # records may still be written, and sending them again would duplicate them.
        results = await asyncio.gather(*(future for future, _size in self._pending), return_exceptions=True)
        # Remove exactly the acknowledged entries (by identity): while the batches were in flight
        # the buffer may have dropped its oldest entries, so "the first N" would be the wrong ones.
        acknowledged = {
            id(entry)
            for records, result in zip(sent, results, strict=True)
            if not isinstance(result, BaseException)
            for entry in records
        }
        if acknowledged:
            self.buffer = collections.deque(entry for entry in self.buffer if id(entry) not in acknowledged)
        self.sent += len(acknowledged)
        failures = [
            (result, len(records))
            for records, result in zip(sent, results, strict=True)
            if isinstance(result, BaseException)
        ]
        self.failed_sends += sum(size for _result, size in failures)
        if send_error is not None:
            raise send_error
        if failures:
            failed = failures[0][0]
            raise failed if isinstance(failed, KafkaError) else KafkaError(str(failed))

    def _batches(self, producer: AIOKafkaProducer, records: list[Entry]):
        """Records as full batches (a batch takes what fits in the producer's max_batch_size)."""
        position = 0
        while position < len(records):
            builder = producer.create_batch()
            start = position
            while position < len(records):
                key, value = records[position]
                if builder.append(key=key, value=value, timestamp=None) is None:
                    break
                position += 1
            if position == start:  # one record larger than a batch: the broker refuses it anyway
                raise KafkaError(f"a telemetry record of {len(records[start][1])} bytes exceeds max_batch_size")
            yield builder, records[start:position]

    async def _partitioner(self, producer: AIOKafkaProducer):
        """key -> partition as the client's default partitioner maps it (murmur2), cached per key."""
        partitions = sorted(await producer.partitions_for(self.topic))
        if len(partitions) != self._partition_count:
            self._partitions, self._partition_count = {}, len(partitions)
        cache = self._partitions

        def partition_of(key: bytes) -> int:
            partition = cache.get(key)
            if partition is None:
                partition = cache[key] = DefaultPartitioner()(key, partitions, partitions)
            return partition

        return partition_of
