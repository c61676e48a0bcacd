"""Kafka stage against the real (Tansu) broker: publish, consume, skip garbage, commit."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from gateway.kafka.config import client_options, producer_options
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.producer import TelemetryPublisher
from gateway.kafka.topics import ensure_topics
from gateway.live.groups import FLEET_GROUP
from gateway.models import LatestTelemetry
from gateway.telemetry import build_record, encode_record
from tests.conftest import make_charge_point, wait_for, within

pytestmark = pytest.mark.django_db(transaction=True)


def record(slug: str, seq: int) -> dict:
    return build_record(charge_point=slug, site="test-site", profile="generic-ev-charger", seq=seq, fields=None)


async def test_publisher_keys_by_charge_point_and_keeps_order(kafka) -> None:
    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic])
    publisher = TelemetryPublisher(topic)
    await publisher.start()
    for seq in range(1, 21):
        publisher.publish(record("cp-a" if seq % 2 else "cp-b", seq))
    await publisher.stop()
    assert publisher.sent == 20

    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **client_options())
    await consumer.start()
    try:
        seen: dict[bytes, list[int]] = {}
        while sum(map(len, seen.values())) < 20:
            for messages in (await within(consumer.getmany(timeout_ms=1000))).values():
                for message in messages:
                    seen.setdefault(message.key, []).append(int(message.value.split(b'"seq":')[1].split(b",")[0]))
    finally:
        await consumer.stop()
    # Same key → same partition → order preserved per charge point.
    assert seen[b"cp-a"] == list(range(1, 21, 2))
    assert seen[b"cp-b"] == list(range(2, 21, 2))


async def test_consumer_skips_malformed_messages_and_commits(kafka, site, generic_profile) -> None:
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic], partitions=1)
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    for payload in (b"\x00garbage", b'{"type": "telemetry"}', encode_record(record("cp-a", 42))):
        await producer.send_and_wait(topic, payload, key=b"cp-a")
    await producer.stop()

    layer = get_channel_layer()
    browser = await layer.new_channel()
    await layer.group_add(FLEET_GROUP, browser)

    consumer = TelemetryConsumer(topic, auto_offset_reset="earliest")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        event = await within(layer.receive(browser))
        assert event["record"]["seq"] == 42
        await wait_for(lambda: consumer.handled == 1, what="the valid record handled")
        assert consumer.skipped == 2
    finally:
        stop.set()
        await within(task)
    latest = await LatestTelemetry.objects.select_related("charge_point").aget()
    assert latest.charge_point.slug == "cp-a" and latest.record["seq"] == 42

    # Everything handled (skipped included) is committed: a restart does not replay it.
    check = AIOKafkaConsumer(group_id=kafka["CONSUMER_GROUP"], enable_auto_commit=False, **client_options())
    await check.start()
    try:
        assert await check.committed(TopicPartition(topic, 0)) == 3
    finally:
        await check.stop()


async def test_publisher_loses_nothing_across_a_broker_outage(kafka, monkeypatch, tmp_path) -> None:
    from django.conf import settings

    from gateway.kafka.embedded import start_broker, stop_broker
    from tests.conftest import free_port

    port = free_port()
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    topic = kafka["TELEMETRY_TOPIC"]
    publisher = TelemetryPublisher(topic)
    await publisher.start()
    publisher.publish(record("cp-a", 1))
    publisher.publish(record("cp-a", 2))
    # No broker yet: publish() did not block and the records wait in the buffer.
    assert len(publisher.buffer) == 2 and publisher.sent == 0

    broker = await asyncio.to_thread(start_broker, port=port, log_path=tmp_path / "tansu.log")
    try:
        await ensure_topics([topic])
        await wait_for(lambda: publisher.sent == 2, timeout_s=60, what="buffered records sent after the outage")
        await publisher.stop()
        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **client_options())
        await consumer.start()
        try:
            got: list[bytes] = []
            while len(got) < 2:
                for messages in (await within(consumer.getmany(timeout_ms=1000))).values():
                    got += [m.value for m in messages]
        finally:
            await consumer.stop()
        assert [b'"seq":1,' in v for v in got] == [True, False]
    finally:
        stop_broker(broker)
