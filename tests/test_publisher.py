"""OutboxPublisher over KafkaTransport against the real (Tansu) broker: keyed, ordered, durable across close."""

import logging
from pathlib import Path

import pytest
from django.conf import settings

from gateway.kafka.topics import ensure_topics
from gateway.kafka.transport import KafkaTransport
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher
from gateway.telemetry import build_record, encode_record
from tests.conftest import free_port, within
from tests.kafka_read import read_all, seqs_by_charge_point

pytestmark = pytest.mark.django_db(transaction=True)


def record(slug: str, seq: int) -> dict:
    return build_record(charge_point=slug, site="test-site", profile="generic-ev-charger", seq=seq, fields=None)


def kafka_publisher(path: Path, topic: str) -> OutboxPublisher:
    return OutboxPublisher(Outbox(path), KafkaTransport(topic))


async def test_records_arrive_keyed_by_charge_point_and_in_order(kafka, tmp_path: Path) -> None:
    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic])
    publisher = kafka_publisher(tmp_path / "p.sqlite3", topic)
    await publisher.start()
    try:
        for seq in range(1, 201):
            for slug in ("cp-a", "cp-b", "cp-c"):
                publisher.publish(record(slug, seq))
        assert await publisher.flush(30)
        assert (publisher.stats.published, publisher.stats.delivered, publisher.stats.buffered) == (600, 600, 0)
    finally:
        await publisher.close()
    messages = await read_all(topic)
    for slug in ("cp-a", "cp-b", "cp-c"):
        assert len({m.partition for m in messages if m.key == slug.encode()}) == 1
    assert seqs_by_charge_point(messages) == {slug: list(range(1, 201)) for slug in ("cp-a", "cp-b", "cp-c")}


async def test_publish_encoded_forwards_the_bytes_as_given(kafka, tmp_path: Path) -> None:
    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic])
    publisher = kafka_publisher(tmp_path / "p.sqlite3", topic)
    await publisher.start()
    try:
        publisher.publish_encoded(topic, b"cp-x", b'{"charge_point": "cp-x", "seq": 7}')
        publisher.persist()
        assert publisher.outbox.count == 1  # stored before any send: the bridge acks MQTT after this
        assert await publisher.flush(30)
    finally:
        await publisher.close()
    [message] = await read_all(topic)
    assert (message.key, message.value) == (b"cp-x", b'{"charge_point": "cp-x", "seq": 7}')


async def test_close_keeps_what_was_not_delivered_and_the_next_publisher_delivers_it(
    kafka, tmp_path: Path, monkeypatch, caplog
) -> None:
    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic])
    path = tmp_path / "p.sqlite3"
    # No broker at this address: nothing can be delivered.
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    caplog.set_level(logging.WARNING, logger="gateway.publish.publisher")
    publisher = kafka_publisher(path, topic)
    await publisher.start()
    for seq in range(1, 51):
        publisher.publish(record("cp-a", seq))
    assert not await publisher.flush(0.5)
    await within(publisher.close(flush_timeout_s=0.5))
    assert (publisher.stats.delivered, publisher.outbox.count) == (0, 50)
    assert any("kafka unavailable" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("gave up flushing 50 records at shutdown") for r in caplog.records)

    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", kafka["KAFKA_BOOTSTRAP_SERVERS"])
    successor = kafka_publisher(path, topic)
    assert successor.stats.buffered == 50
    await successor.start()
    try:
        assert await successor.flush(30)  # what the predecessor left counts as published before the flush
        assert successor.stats.delivered == 50
        successor.publish(record("cp-a", 51))
        assert await successor.flush(30)
    finally:
        await successor.close()
    assert successor.stats.delivered == 51
    assert seqs_by_charge_point(await read_all(topic)) == {"cp-a": list(range(1, 52))}


def test_runpoller_refuses_an_unknown_output() -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="Unknown output 'amqp': choose one of kafka, mqtt"):
        call_command("runpoller", "--output", "amqp")


async def test_a_second_poller_with_the_same_id_is_refused_while_the_first_runs(kafka) -> None:
    from gateway.publish.outbox import OutboxLocked
    from gateway.publish.outputs import build_publisher

    first = build_publisher("kafka", poller_id="twin")
    try:
        with pytest.raises(OutboxLocked, match=r"poller-twin\.sqlite3 is in use by another process"):
            build_publisher("kafka", poller_id="twin")
    finally:
        await first.close()
    await build_publisher("kafka", poller_id="twin").close()


def test_the_mqtt_output_missing_from_a_build_is_a_clear_configuration_error(monkeypatch) -> None:
    import sys

    from django.core.exceptions import ImproperlyConfigured

    from gateway.publish.outputs import build_publisher

    monkeypatch.setitem(sys.modules, "gateway.mqtt.publisher", None)  # as if the module were absent
    with pytest.raises(ImproperlyConfigured, match="the mqtt output is not available"):
        build_publisher("mqtt", poller_id="p")


def test_the_default_poller_id_is_the_setting_else_the_host_name_and_site(monkeypatch) -> None:
    import socket

    from gateway.publish.outputs import default_poller_id

    monkeypatch.setitem(settings.EVDASH, "POLLER_ID", "")
    assert default_poller_id(None) == socket.gethostname()
    assert default_poller_id("depot") == f"{socket.gethostname()}-depot"
    monkeypatch.setitem(settings.EVDASH, "POLLER_ID", "edge-7")
    assert default_poller_id("depot") == "edge-7"


async def test_a_producer_whose_sender_died_is_replaced_and_the_next_round_delivers(kafka) -> None:
    """aiokafka's producer fails every send for good once its sender routine died ("Unexpected
    error during batch delivery"): the transport starts the next round with a new producer."""
    from aiokafka.errors import KafkaError

    from gateway.publish.base import OutboxEntry

    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic])
    transport = KafkaTransport(topic)
    entries = [OutboxEntry(n, topic, b"cp-a", encode_record(record("cp-a", n))) for n in (1, 2)]
    await transport.connect()
    try:
        # What aiokafka's sender does when its routine dies: every pending and later batch fails.
        transport._producer._message_accumulator.fail_all(KafkaError("Unexpected error during batch delivery"))
        failed = await within(transport.send(entries[:1]))
        assert failed.error is not None and list(failed.acked) == []
        await transport.connect()
        delivered = await within(transport.send(entries))
        assert delivered.error is None and sorted(delivered.acked) == [1, 2]
    finally:
        await transport.close()
    assert seqs_by_charge_point(await read_all(topic)) == {"cp-a": [1, 2]}


async def test_stalled_counts_the_time_records_wait_with_none_delivered(kafka, tmp_path: Path) -> None:
    """The one rule of a stuck outbox (readiness, the pipeline page): records waiting and nothing
    delivered since; an empty outbox, or one that delivers, is not stalled however old its backlog."""
    import asyncio

    topic = kafka["TELEMETRY_TOPIC"]
    await ensure_topics([topic])
    publisher = kafka_publisher(tmp_path / "p.sqlite3", topic)
    assert publisher.stats.stalled_s() == 0.0
    await asyncio.sleep(1.0)  # empty all along: the wait starts with the first record
    publisher.publish(record("cp-a", 1))
    publisher.persist()  # not started: nothing can be delivered
    await asyncio.sleep(0.3)
    assert 0.3 <= publisher.stats.stalled_s() < 0.9
    await publisher.start()
    try:
        assert await publisher.flush(30)
        assert publisher.stats.stalled_s() == 0.0
    finally:
        await publisher.close()
