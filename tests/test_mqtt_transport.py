"""MqttTransport against a real Mosquitto (TLS, password, ACL: tests/mosquitto.py), watched by an aiomqtt subscriber."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiomqtt
import orjson
import pytest

from gateway.mqtt.config import parse_mqtt_url
from gateway.mqtt.state import ChargePointStates
from gateway.mqtt.transport import MqttTransport
from gateway.publish.base import OutboxEntry, TransportUnavailable
from gateway.telemetry import build_record, encode_record
from tests.mosquitto import (
    Mosquitto,
    mosquitto_fixture,  # noqa: F401 (the `mosquitto` fixture)
)

pytestmark = pytest.mark.timeout(60)


def make_transport(broker: Mosquitto, poller_id: str = "p1", **options: float) -> MqttTransport:
    config = parse_mqtt_url(broker.url("poller"), ca_file=str(broker.ca_file))
    return MqttTransport(poller_id, config, **options)  # type: ignore[arg-type]


def records(charge_points: list[str], count: int, *, site: str = "depot", offline: bool = False) -> list[dict]:
    """`count` records per charge point, interleaved as a poller publishes them."""
    return [
        build_record(
            charge_point=cp, site=site, profile="generic-ev-charger", seq=seq, fields=None if offline else _fields()
        )
        for seq in range(count)
        for cp in charge_points
    ]


def _fields():
    from gateway.profiles.decode import TelemetryFields

    return TelemetryFields(status="charging", iec61851_state="C", values={"power_w": 7200.0}, extra={}, problems=[])


def entries_of(transport: MqttTransport, items: list[dict], first_id: int = 1) -> list[OutboxEntry]:
    return [
        OutboxEntry(first_id + i, transport.topic_for(r), r["charge_point"].encode(), encode_record(r))
        for i, r in enumerate(items)
    ]


@asynccontextmanager
async def watcher(broker: Mosquitto, topic: str = "evdash/#") -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(**broker.client_options("watcher")) as client:
        await client.subscribe(topic, qos=1)
        yield client


async def receive(client: aiomqtt.Client, count: int, timeout_s: float = 20.0) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []

    async def collect() -> None:
        async for message in client.messages:
            got.append(message)
            if len(got) == count:
                return

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"received {len(got)} of {count} messages in {timeout_s} s") from None
    return got


async def retained(broker: Mosquitto, topic: str) -> dict:
    """The retained message a new subscriber gets first, decoded (fails if there is none)."""
    async with watcher(broker, topic) as client:
        (message,) = await receive(client, 1, timeout_s=5)
    assert message.retain, f"{topic}: not a retained message"
    return orjson.loads(message.payload)


async def test_records_arrive_on_their_topics_qos1_not_retained_in_order(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto)
    published = records(["cp-1", "cp-2", "cp-3"], 700)
    async with watcher(mosquitto, "evdash/+/+/telemetry") as client:
        await transport.connect()
        entries = entries_of(transport, published)
        result = await transport.send(entries)
        assert result.error is None
        assert list(result.acked) == [e.id for e in entries]
        got = await receive(client, len(published))
    assert [str(m.topic) for m in got] == [f"evdash/depot/{r['charge_point']}/telemetry" for r in published]
    assert [m.payload for m in got] == [encode_record(r) for r in published]  # the same bytes as on Kafka
    assert {m.qos for m in got} == {1}
    async with watcher(mosquitto, "evdash/+/+/telemetry") as late:  # live messages never carry the retain flag
        with pytest.raises(AssertionError, match="received 0 of 1"):
            await receive(late, 1, timeout_s=0.5)  # nothing retained for a new subscriber
    await transport.close()


async def test_poller_state_online_then_offline_on_clean_close(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto, "edge-7")
    await transport.connect()
    online = await retained(mosquitto, "evdash/pollers/edge-7/state")
    assert (online["state"], online["poller"]) == ("online", "edge-7")
    await transport.close()  # DISCONNECT discards the will: the transport says "offline" itself
    offline = await retained(mosquitto, "evdash/pollers/edge-7/state")
    assert (offline["state"], offline["poller"]) == ("offline", "edge-7")
    assert offline["ts"] >= online["ts"]
    assert "Client evdash-poller-edge-7 disconnected." in mosquitto.log()  # not "closed its connection"


async def test_last_will_sets_the_poller_offline_when_the_connection_dies(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto, "edge-8")
    await transport.connect()
    assert (await retained(mosquitto, "evdash/pollers/edge-8/state"))["state"] == "online"
    transport._connection.fail("simulated crash")  # RST, no DISCONNECT: what kill -9 looks like to the broker
    await asyncio.sleep(0.3)
    will = await retained(mosquitto, "evdash/pollers/edge-8/state")
    assert (will["state"], will["poller"]) == ("offline", "edge-8")
    await transport.close()


async def test_window_of_unacknowledged_publishes_and_packet_ids_wrap(mosquitto: Mosquitto) -> None:
    """70,000 messages through a window of 500: never more in flight, ids wrap past 65,535, all acked."""
    transport = make_transport(mosquitto, max_in_flight=500)
    await transport.connect()
    most_in_flight = 0
    encode = transport._encode

    def encode_and_count(connection, chunk, dropped):  # type: ignore[no-untyped-def]
        nonlocal most_in_flight
        data = encode(connection, chunk, dropped)
        most_in_flight = max(most_in_flight, len(connection.in_flight))
        return data

    transport._encode = encode_and_count  # type: ignore[method-assign]
    entries = [OutboxEntry(i, "evdash/depot/cp-1/telemetry", b"cp-1", b"%d" % i) for i in range(1, 70_001)]
    result = await transport.send(entries)
    assert result.error is None and len(result.acked) == 70_000
    assert most_in_flight == 500
    assert transport._packet_id == 70_001 - 65_535  # +1: the online state message came first
    await transport.close()


async def test_broker_restart_reported_then_reconnect_publishes_states_again(mosquitto: Mosquitto) -> None:
    """A restarted broker without persistence forgot every retained state: a reconnect restores them."""
    transport = make_transport(mosquitto, "edge-9")
    states = ChargePointStates(transport)
    await transport.connect()
    for record in records(["cp-1"], 1) + records(["cp-2"], 1, offline=True):
        states.observe(record)
    assert (await retained(mosquitto, "evdash/depot/cp-2/state"))["state"] == "offline"
    mosquitto.restart()
    await asyncio.sleep(0.2)
    result = await transport.send(entries_of(transport, records(["cp-1"], 3)))
    if result.error is not None:  # the loss was noticed by this send: reported, then the next one reconnects
        assert isinstance(result.error, TransportUnavailable)
        assert "broker closed the connection" in str(result.error) or "connection lost" in str(result.error)
        result = await transport.send(entries_of(transport, records(["cp-1"], 3)))
    assert result.error is None and len(result.acked) == 3
    assert (await retained(mosquitto, "evdash/depot/cp-1/state"))["state"] == "online"
    assert (await retained(mosquitto, "evdash/depot/cp-2/state"))["state"] == "offline"
    assert (await retained(mosquitto, "evdash/pollers/edge-9/state"))["state"] == "online"
    await transport.close()


async def test_state_published_on_change_only(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto)
    states = ChargePointStates(transport)
    await transport.connect()
    async with watcher(mosquitto, "evdash/depot/+/state") as client:
        for batch in (records(["cp-1"], 5), records(["cp-1"], 3, offline=True), records(["cp-1"], 4)):
            for record in batch:
                states.observe(record)
        got = await receive(client, 3)
        with pytest.raises(AssertionError, match="received 0 of 1"):
            await receive(client, 1, timeout_s=0.5)
    assert [orjson.loads(m.payload)["state"] for m in got] == ["online", "offline", "online"]
    assert {m.qos for m in got} == {1}
    assert states.published == 3
    await transport.close()


async def test_no_puback_in_time_is_an_error_and_drops_the_connection(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto, ack_timeout_s=1.0)
    await transport.connect()
    assert mosquitto.process is not None
    os.kill(mosquitto.process.pid, signal.SIGSTOP)  # a hung broker: the socket stays open, nothing answers
    try:
        result = await asyncio.wait_for(transport.send(entries_of(transport, records(["cp-1"], 10))), 10)
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)
    assert result.acked == []
    assert isinstance(result.error, TransportUnavailable)
    assert "no PUBACK within 1.0 s; 10 messages unconfirmed" in str(result.error)
    assert not transport.connected
    result = await transport.send(entries_of(transport, records(["cp-1"], 2)))
    assert result.error is None and len(result.acked) == 2
    await transport.close()


async def test_keepalive_pings_an_idle_connection_and_detects_a_dead_broker(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto, keepalive_s=1)
    await transport.connect()
    connection = transport._connection
    await asyncio.sleep(3.5)  # Mosquitto drops a client silent for 1.5 keepalives
    assert transport.connected and transport._connection is connection
    assert mosquitto.process is not None
    os.kill(mosquitto.process.pid, signal.SIGSTOP)
    try:
        for _ in range(60):
            if not transport.connected:
                break
            await asyncio.sleep(0.1)
    finally:
        os.kill(mosquitto.process.pid, signal.SIGCONT)
    assert connection is not None and connection.lost_reason == "no PINGRESP within the 1 s keepalive"
    await transport.close()


def test_acked_is_a_prefix_per_key() -> None:
    """SendResult's rule (gateway.publish.base): after a key's first unconfirmed entry, none of its later ones."""
    entries = [OutboxEntry(i, "t", key, b"") for i, key in enumerate([b"a", b"b", b"a", b"b", b"a", b"c"], 1)]
    assert MqttTransport._confirmed(entries, {1, 2, 3, 4, 5, 6}) == [1, 2, 3, 4, 5, 6]
    assert MqttTransport._confirmed(entries, {1, 2, 4, 5, 6}) == [1, 2, 4, 6]  # a's 5 waits behind 3
    assert MqttTransport._confirmed(entries, {2, 3, 4, 5, 6}) == [2, 4, 6]  # a's 3 and 5 wait behind 1
    assert MqttTransport._confirmed(entries, {1, 3, 4, 5, 6}) == [1, 3, 5, 6]  # b's 4 waits behind 2


async def test_an_entry_no_broker_could_take_is_dropped_not_retried_forever(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    transport = make_transport(mosquitto)
    entries = [
        OutboxEntry(1, "evdash/depot/cp-1/telemetry", b"cp-1", b"1"),
        OutboxEntry(2, "evdash/+/cp-1/telemetry", b"cp-1", b"2"),  # a wildcard: no PUBLISH can carry it
        OutboxEntry(3, "evdash/depot/cp-1/telemetry", b"cp-1", b"3"),
    ]
    result = await transport.send(entries)
    assert result.error is None and list(result.acked) == [1, 2, 3]
    assert "dropping an outbox entry for MQTT topic 'evdash/+/cp-1/telemetry'" in caplog.text
    await transport.close()


async def test_a_round_is_not_held_by_nagle_and_delayed_acks(mosquitto: Mosquitto) -> None:
    """Mosquitto's default keeps Nagle on: without our quick ACKs, the PUBACKs after the first of a
    burst waited for a delayed ACK, and every round took ~40 ms (1,100 records/s instead of 5,000)."""
    import statistics
    import time

    transport = make_transport(mosquitto)
    await transport.connect()
    durations = []
    for round_number in range(20):
        entries = [
            OutboxEntry(i, "evdash/depot/cp-1/telemetry", b"cp-1", b"x" * 600)
            for i in range(round_number * 50, round_number * 50 + 50)
        ]
        started = time.perf_counter()
        result = await transport.send(entries)
        durations.append(time.perf_counter() - started)
        assert result.error is None
        await asyncio.sleep(0.01)  # the publisher's linger between rounds
    await transport.close()
    assert statistics.median(durations) < 0.02, f"median round {statistics.median(durations) * 1000:.0f} ms"


async def test_the_demo_broker_amqtt_takes_the_same_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The demo's embedded broker (amqtt, no TLS, no password): telemetry in order, the poller's state retained."""
    from gateway.mqtt.embedded import start_mqtt_broker, stop_mqtt_broker
    from tests.conftest import free_port

    port = free_port()
    broker = start_mqtt_broker(port=port, log_path=tmp_path / "amqtt.log")
    try:
        transport = MqttTransport("demo", parse_mqtt_url(f"mqtt://127.0.0.1:{port}"))
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311) as client:
            await client.subscribe("evdash/+/+/telemetry", qos=1)
            await transport.connect()
            published = records(["cp-1", "cp-2"], 200)
            result = await transport.send(entries_of(transport, published))
            assert result.error is None and len(result.acked) == len(published)
            got = await receive(client, len(published))
        assert [m.payload for m in got] == [encode_record(r) for r in published]
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V311) as late:
            await late.subscribe("evdash/pollers/demo/state", qos=1)
            (state,) = await receive(late, 1)
        assert orjson.loads(state.payload)["state"] == "online"
        await transport.close()
    finally:
        stop_mqtt_broker(broker)
