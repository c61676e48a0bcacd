"""manage.py runbridge as a real process between a real Mosquitto (TLS, passwords, ACL) and Tansu.

Telemetry is published by a paho client in the test, as the poller's user; the bridge logs in as
its own user, which may only read telemetry.
"""

import asyncio
import signal
from pathlib import Path

import pytest

from gateway.kafka.transport import KafkaTransport
from gateway.mqtt.bridge import Bridge
from gateway.mqtt.config import parse_mqtt_url
from gateway.mqtt.topics import telemetry_subscription
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher
from tests.bridge_harness import (
    BRIDGE_STOPPED,
    BridgeProcess,
    TelemetrySource,
    bridge_env,
    decoded,
    first_occurrences_in_order,
    forwarded,
    last_stats,
)
from tests.kafka_read import read_all
from tests.mosquitto import Mosquitto, mosquitto_fixture  # noqa: F401 (the `mosquitto` fixture)
from tests.processes import wait_until, wait_until_async


def read_records(topic: str) -> list:
    return asyncio.run(read_all(topic))


def test_bridge_forwards_telemetry_keyed_by_charge_point_with_payloads_unchanged(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto
) -> None:
    """Over TLS with the bridge's user; a message on a malformed topic is dropped, counted and logged once."""
    source = TelemetrySource(mosquitto)
    env = bridge_env(tmp_path, kafka, mosquitto.url("bridge"), EVDASH_MQTT_CA_FILE=str(mosquitto.ca_file))
    bridge = BridgeProcess(env, tmp_path / "runbridge.log")
    try:
        bridge.wait_connected()
        for _ in range(25):
            source.publish_round()
        # '+' matches an empty level: these reach the bridge, and name no site or charge point.
        source.publish_raw("evdash//cp-1/telemetry", b'{"seq": 1}')
        source.publish_raw("evdash/depot//telemetry", b'{"seq": 2}')
        for _ in range(25):
            source.publish_round()
        source.wait_all_acknowledged()
        wait_until(lambda: forwarded(bridge) >= source.sent, 30, "the bridge to forward everything", bridge)
        code, took_s = bridge.stop()
        output = bridge.output()
        assert code == 0, output[-3000:]
    finally:
        bridge.kill()
        source.close()

    messages = read_records(kafka["TELEMETRY_TOPIC"])
    assert len(messages) == source.sent == 200
    for message, record in zip(messages, decoded(messages), strict=True):
        assert message.key == record["charge_point"].encode()
        assert message.value == source.payloads[(record["charge_point"], record["seq"])]  # byte for byte
    seqs, duplicates = first_occurrences_in_order(decoded(messages))
    assert seqs == {slug: list(range(1, 51)) for slug in source.slugs}
    assert duplicates == 0

    stopped = last_stats(output)
    assert output.count(BRIDGE_STOPPED) == 1
    assert (stopped["received"], stopped["forwarded"], stopped["buffered"], stopped["malformed"]) == (
        "202",
        "200",
        "0",
        "2",
    )
    # Logged once (rate-limited), with the topic; the bridge went on forwarding after it.
    assert output.count("dropped a message on 'evdash//cp-1/telemetry'") == 1
    assert "dropped a message on 'evdash/depot//telemetry'" not in output
    assert "mqtts://bridge@127.0.0.1" in output
    assert mosquitto.users["bridge"].password not in output
    assert "Traceback" not in output
    print(f"runbridge stopped in {took_s:.2f} s")


def test_a_persistent_session_keeps_what_is_published_while_the_bridge_is_down(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto
) -> None:
    source = TelemetrySource(mosquitto)
    env = bridge_env(tmp_path, kafka, mosquitto.url("bridge", tls=False))
    first = BridgeProcess(env, tmp_path / "runbridge-1.log")
    second: BridgeProcess | None = None
    try:
        first.wait_connected()
        for _ in range(10):
            source.publish_round()
        wait_until(lambda: forwarded(first) >= 40, 30, "the first records forwarded", first)
        code, _ = first.stop(signal.SIGTERM)
        assert code == 0, first.output()[-3000:]

        for _ in range(90):  # while no bridge is connected: the broker queues them for its session
            source.publish_round()
        source.wait_all_acknowledged()

        second = BridgeProcess(env, tmp_path / "runbridge-2.log")
        second.wait_connected()
        wait_until(lambda: forwarded(second) >= 360, 30, "the queued records forwarded", second)
        code, _ = second.stop(signal.SIGTERM)
        assert code == 0, second.output()[-3000:]
    finally:
        first.kill()
        if second is not None:
            second.kill()
        source.close()

    records = decoded(read_records(kafka["TELEMETRY_TOPIC"]))
    seqs, duplicates = first_occurrences_in_order(records)
    assert seqs == {slug: list(range(1, 101)) for slug in source.slugs}
    assert duplicates == 0  # a clean stop acknowledges exactly what it stored
    assert last_stats(second.output())["received"] == "360"


class DiskFullPublisher(OutboxPublisher):
    """The outbox's disk fails: nothing can be stored."""

    def persist(self) -> None:
        if self._pending:
            raise OSError(28, "No space left on device (the test's)")


def bridge_in_process(publisher_class: type[OutboxPublisher], outbox: Path, broker: Mosquitto, topic: str) -> Bridge:
    return Bridge(
        publisher_class(Outbox(outbox), KafkaTransport(topic)),
        kafka_topic=topic,
        config=parse_mqtt_url(broker.url("bridge", tls=False)),
        client_id=f"bridge-{topic}",
        subscription=telemetry_subscription(),
        stats_interval_s=60,
    )


async def test_nothing_is_acknowledged_to_the_broker_before_it_is_stored(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox cannot store: the bridge fails without a PUBACK, and the next one gets every message again."""
    monkeypatch.setattr("gateway.mqtt.bridge.FLUSH_TIMEOUT_S", 1.0)  # the failing one has nothing to flush
    topic, outbox = kafka["TELEMETRY_TOPIC"], tmp_path / "bridge.sqlite3"
    source = TelemetrySource(mosquitto)
    try:
        failing = bridge_in_process(DiskFullPublisher, outbox, mosquitto, topic)
        running = asyncio.create_task(failing.run(asyncio.Event()))
        await wait_until_async(lambda: failing.mqtt_connects == 1, 10, "the bridge to subscribe")
        for _ in range(5):
            source.publish_round()
        with pytest.raises(OSError, match="No space left"):
            await asyncio.wait_for(running, 10)
        assert failing.received == 0

        stop = asyncio.Event()
        healthy = bridge_in_process(OutboxPublisher, outbox, mosquitto, topic)
        running = asyncio.create_task(healthy.run(stop))
        await wait_until_async(lambda: healthy.stats.forwarded >= 20, 20, "the messages sent again")
        stop.set()
        await asyncio.wait_for(running, 20)
    finally:
        source.close()
    seqs, duplicates = first_occurrences_in_order(decoded(await read_all(topic)))
    assert seqs == {slug: [1, 2, 3, 4, 5] for slug in source.slugs}
    assert duplicates == 0
