"""Publish telemetry records to Kafka, keyed by charge point, surviving broker outages."""

import asyncio
import collections
import itertools
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway.kafka.config import producer_options
from gateway.runtime import Backoff
from gateway.telemetry import Record, encode_record

logger = logging.getLogger(__name__)


class TelemetryPublisher:
    """Buffers records in memory and sends them in order; `publish` never blocks the poll loop.

    While the broker is unreachable records wait in a bounded buffer (oldest dropped first, and
    counted) and are sent once it is back. A record leaves the buffer only when the broker has
    acknowledged it (acks=all).

    Delivery is at least once. Without the idempotent producer (KAFKA_ENABLE_IDEMPOTENCE, which
    Tansu does not support) a record can be written twice, but only one that was in flight (handed
    to the client, not yet acknowledged) when the connection failed: the client or this buffer
    sends it again. Consumers tolerate that (see gateway.kafka.consumer).
    """

    def __init__(self, topic: str, *, buffer_size: int = 50_000) -> None:
        self.topic = topic
        self.buffer: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.buffer_size = buffer_size
        self.sent = 0
        self.dropped = 0
        self.failed_sends = 0  # sends the broker did not acknowledge in time; the records stay buffered
        self._wakeup = asyncio.Event()
        self._abandon = asyncio.Event()  # set when stop() gives up flushing
        self._backoff = Backoff()
        self._pending: list[asyncio.Future] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def in_flight(self) -> int:
        """Records handed to the Kafka client and not acknowledged yet."""
        return sum(not future.done() for future in self._pending)

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
            producer = AIOKafkaProducer(**producer_options())
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            logger.info("connected to Kafka, publishing to %s", self.topic)
        return self._producer

    async def _send_buffered(self, producer: AIOKafkaProducer) -> None:
        batch = list(itertools.islice(self.buffer, 1000))
        self._pending = []
        send_error: KafkaError | None = None
        for key, value in batch:
            try:
                self._pending.append(await producer.send(self.topic, value, key=key))
            except KafkaError as exc:  # e.g. no metadata while the broker is away
                send_error = exc
                break
        # Even when send() failed part-way, learn the fate of what the client already holds: those
        # records may still be written, and sending them again would duplicate them.
        results = await asyncio.gather(*self._pending, return_exceptions=True)
        # Remove exactly the acknowledged entries (by identity): while the batch was in flight the
        # buffer may have dropped its oldest entries, so "the first N" would be the wrong ones.
        acknowledged = {
            id(entry) for entry, result in zip(batch, results, strict=False) if not isinstance(result, BaseException)
        }
        if acknowledged:
            self.buffer = collections.deque(entry for entry in self.buffer if id(entry) not in acknowledged)
        self.sent += len(acknowledged)
        self.failed_sends += sum(isinstance(result, BaseException) for result in results)
        if send_error is not None:
            raise send_error
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            failed = failures[0]
            raise failed if isinstance(failed, KafkaError) else KafkaError(str(failed))
