"""KafkaTransport: delivers outbox entries to Kafka, keyed by charge point, a batch per partition at a time."""

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from gateway.kafka.config import producer_options
from gateway.publish.base import OutboxEntry, SendResult, TransportUnavailable
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

# The client sends one batch per partition per request to a broker: at its default 16 KiB (~25
# records) a fleet of thousands waits on round trips. 900 KiB (under the brokers' usual 1 MiB
# message limit) carries ~1,300.
MAX_BATCH_BYTES = 900 * 1024
STOP_TIMEOUT_S = 5.0  # stopping a producer that failed a round (_discard)


class KafkaTransport:
    """Sends entries as batches (create_batch/send_batch, not a send() per record: per record that
    was most of the publish cost), grouped by (topic, partition).

    Each partition sends one batch at a time and stops at its first failure, so what it confirms
    is a prefix of each key's entries (base.SendResult): resending from the oldest keeps every
    charge point in order. A key's partition is the one the client's own send() would pick
    (murmur2, like the Java client).

    Delivery is at least once. Without the idempotent producer (KAFKA_ENABLE_IDEMPOTENCE, which
    Tansu does not support) a record can be written twice, but only one that was in flight (handed
    to the client, not yet acknowledged) when the connection failed. Consumers tolerate that
    (see gateway.kafka.consumer).
    """

    name = "kafka"

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        # topic -> (partition count, key -> partition): the partitioner's answers, cached per key.
        self._partitions: dict[str, tuple[int, dict[bytes, int]]] = {}

    def topic_for(self, record: Record) -> str:
        return self.topic

    async def connect(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**(producer_options() | {"max_batch_size": MAX_BATCH_BYTES}))
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await producer.stop()
            raise TransportUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._producer = producer
        logger.info("connected to Kafka, publishing to %s", self.topic)

    async def send(self, entries: Sequence[OutboxEntry]) -> SendResult:
        producer = self._producer
        if producer is None:
            return SendResult([], TransportUnavailable("not connected"))
        by_partition: dict[tuple[str, int], list[OutboxEntry]] = {}
        try:
            for topic, topic_entries in _by_topic(entries).items():
                partition_of = await self._partitioner(producer, topic)
                for entry in topic_entries:
                    by_partition.setdefault((topic, partition_of(entry.key)), []).append(entry)
        except KafkaError as exc:  # e.g. no metadata while the broker is away
            return SendResult([], exc)
        results = await asyncio.gather(
            *(
                self._send_partition(producer, topic, partition, partition_entries)
                for (topic, partition), partition_entries in by_partition.items()
            )
        )
        acked = [entry_id for ids, _error in results for entry_id in ids]
        errors = [error for _ids, error in results if error is not None]
        if errors:
            await self._discard(producer)
        return SendResult(acked, errors[0] if errors else None)

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """After a failed round the next one starts with a new producer (connect()).

        aiokafka's producer is unusable for good once its sender routine died ("Unexpected error
        during batch delivery": every later send raises that again); seen under load after a broker
        came back, when the bridge then retried for minutes without sending anything. A new
        producer costs a connection and a metadata request, once per failed round.
        """
        if self._producer is producer:
            self._producer = None
        try:
            await asyncio.wait_for(producer.stop(), STOP_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("stopping a failed producer: %s", exc)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _send_partition(
        self, producer: AIOKafkaProducer, topic: str, partition: int, entries: list[OutboxEntry]
    ) -> tuple[list[int], BaseException | None]:
        """Send one partition's entries, a batch at a time; stop at the first failure."""
        acked: list[int] = []
        position = 0
        try:
            while position < len(entries):
                builder = producer.create_batch()
                start = position
                while position < len(entries):
                    entry = entries[position]
                    if builder.append(key=entry.key, value=entry.value, timestamp=None) is None:
                        break
                    position += 1
                if position == start:
                    # Larger than a batch: no broker takes it, and retrying it would stop this
                    # partition for good. Given up (counted as done), loudly.
                    entry = entries[position]
                    logger.error(
                        "dropping a message of %d bytes for %s: larger than a batch (%d bytes)",
                        len(entry.value),
                        topic,
                        MAX_BATCH_BYTES,
                    )
                    acked.append(entry.id)
                    position += 1
                    continue
                future = await producer.send_batch(builder, topic, partition=partition)
                await future
                acked.extend(entry.id for entry in entries[start:position])
        except KafkaError as exc:
            return acked, exc
        return acked, None

    async def _partitioner(self, producer: AIOKafkaProducer, topic: str) -> Callable[[bytes], int]:
        """key -> partition as the client's default partitioner maps it, cached per key."""
        partitions = sorted(await producer.partitions_for(topic))
        count, cache = self._partitions.get(topic, (0, {}))
        if count != len(partitions):
            cache = {}
            self._partitions[topic] = (len(partitions), cache)

        def partition_of(key: bytes) -> int:
            partition = cache.get(key)
            if partition is None:
                partition = cache[key] = DefaultPartitioner()(key, partitions, partitions)
            return partition

        return partition_of


def _by_topic(entries: Sequence[OutboxEntry]) -> dict[str, list[OutboxEntry]]:
    """Entries grouped by topic, in order (usually one topic: the telemetry topic)."""
    if entries and all(entry.topic == entries[0].topic for entry in entries):
        return {entries[0].topic: list(entries)}
    grouped: dict[str, list[OutboxEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.topic, []).append(entry)
    return grouped
