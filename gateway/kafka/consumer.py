"""Consume telemetry from Kafka: validate, store the latest state, push to the browsers."""

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from asgiref.sync import sync_to_async

from gateway.conf import setting
from gateway.kafka.config import client_options
from gateway.live.push import push_telemetry
from gateway.storage import save_latest
from gateway.telemetry import InvalidRecord, Record, decode_record

logger = logging.getLogger(__name__)


class TelemetryConsumer:
    """One member of the consumer group; run several to share the partitions."""

    def __init__(
        self,
        topic: str,
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        max_batch: int = 500,
    ) -> None:
        self.topic = topic
        self.group_id = group_id or setting("CONSUMER_GROUP")
        self.auto_offset_reset = auto_offset_reset
        self.max_batch = max_batch
        self.handled = 0
        self.skipped = 0
        self.assigned = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until stop is set, reconnecting after broker outages."""
        backoff_s = 0.5
        while not stop.is_set():
            try:
                await self._consume(stop)
                backoff_s = 0.5
            except KafkaError as exc:
                logger.warning("Kafka consumer error (%s); retrying in %.1f s", exc, backoff_s)
                try:
                    await asyncio.wait_for(stop.wait(), backoff_s)
                except TimeoutError:
                    backoff_s = min(backoff_s * 2, 30.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            # A live dashboard: ask the broker to answer a fetch after at most 100 ms (default 500).
            fetch_max_wait_ms=100,
            **client_options(),
        )
        await consumer.start()
        self._consumer = consumer
        logger.info("consuming %s as group %s", self.topic, self.group_id)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=self.max_batch)
                if consumer.assignment():
                    self.assigned.set()
                if not batches:
                    continue
                await self._handle(consumer, batches)
        finally:
            self._consumer = None
            await consumer.stop()

    async def _handle(self, consumer: AIOKafkaConsumer, batches: dict) -> None:
        records: list[Record] = []
        for partition, messages in batches.items():
            for message in messages:
                try:
                    records.append(decode_record(message.value))
                except InvalidRecord as exc:
                    self.skipped += 1
                    logger.warning(
                        "skipped malformed message %s[%d]@%d (key %r): %s",
                        partition.topic,
                        partition.partition,
                        message.offset,
                        message.key,
                        exc,
                    )
        try:
            if records:
                await sync_to_async(save_latest)(records)
                await push_telemetry(records)
        except Exception:
            # Not handled, so not committed: rewind to the batch's first offsets and retry.
            logger.exception("could not handle %d records; will retry", len(records))
            for partition, messages in batches.items():
                consumer.seek(partition, messages[0].offset)
            await asyncio.sleep(1.0)
            return
        await consumer.commit()
        self.handled += len(records)
