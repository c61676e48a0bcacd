"""Read back everything a topic holds, for tests that count what reached Kafka."""

import json
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from gateway.kafka.config import client_options


async def read_all(topic: str, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every message in the topic up to its current end offsets, by partition then offset."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options())
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not (numbers := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} has no partitions after {timeout_s} s")
            await consumer.topics()  # refreshes the metadata
        partitions = [TopicPartition(topic, number) for number in sorted(numbers)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        messages: list[ConsumerRecord] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                total = sum(end.values())
                raise AssertionError(f"read {len(messages)} of {total} messages of {topic} in {timeout_s} s")
            for batch in (await consumer.getmany(*partitions, timeout_ms=500)).values():
                messages += batch
        return sorted(messages, key=lambda m: (m.partition, m.offset))
    finally:
        await consumer.stop()


def seqs_by_charge_point(messages: list[ConsumerRecord]) -> dict[str, list[int]]:
    """The sequence numbers each charge point's records carry, in the order they were read."""
    seqs: dict[str, list[int]] = {}
    for message in messages:
        record = json.loads(message.value)
        seqs.setdefault(record["charge_point"], []).append(record["seq"])
    return seqs


def headers_of(message: ConsumerRecord) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers}
