"""Publish telemetry records to Kafka, keyed by charge point, surviving broker outages."""

import asyncio
import collections
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateway.kafka.config import producer_options
from gateway.telemetry import Record, encode_record

logger = logging.getLogger(__name__)


class TelemetryPublisher:
    """Buffers records in memory and sends them in order; `publish` never blocks the poll loop.

    While the broker is unreachable records wait in a bounded buffer (oldest dropped first, and
    counted) and are sent once it is back.
    """

    def __init__(self, topic: str, *, buffer_size: int = 50_000) -> None:
        self.topic = topic
        self.buffer: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.buffer_size = buffer_size
        self.sent = 0
        self.dropped = 0
        self._wakeup = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    def publish(self, record: Record) -> None:
        if len(self.buffer) >= self.buffer_size:
            self.buffer.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("Kafka buffer full: %d telemetry records dropped so far", self.dropped)
        self.buffer.append((record["charge_point"].encode(), encode_record(record)))
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-publisher")

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Send what is buffered (up to the timeout), then close the producer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, flush_timeout_s)
            except TimeoutError:
                logger.warning("gave up flushing %d telemetry records at shutdown", len(self.buffer))
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        backoff_s = 0.5
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
                backoff_s = 0.5
            except (KafkaError, OSError) as exc:
                logger.warning(
                    "Kafka unavailable (%s); %d records buffered, retrying in %.1f s",
                    exc,
                    len(self.buffer),
                    backoff_s,
                )
                if self._closing:
                    return
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)

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
        # Records leave the buffer only once the broker acknowledged them (acks=all).
        batch = list(self.buffer)[:1000]
        futures = [await producer.send(self.topic, value, key=key) for key, value in batch]
        results = await asyncio.gather(*futures, return_exceptions=True)
        delivered = 0
        for result in results:
            if isinstance(result, BaseException):
                break
            delivered += 1
        for _ in range(delivered):
            self.buffer.popleft()
        self.sent += delivered
        if delivered < len(results):
            failed = results[delivered]
            raise failed if isinstance(failed, KafkaError) else KafkaError(str(failed))
