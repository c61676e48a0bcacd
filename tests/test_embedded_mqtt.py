"""The demo's embedded MQTT broker (amqtt in a child process), driven by real aiomqtt clients."""

import asyncio
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE

import aiomqtt
import pytest

from gateway.mqtt.embedded import EmbeddedMqttBrokerError, start_mqtt_broker, stop_mqtt_broker
from tests.conftest import free_port, within

# A client that announces itself once its will is registered and its retained state published,
# then waits to be killed (-9: no DISCONNECT, so the broker must publish the will).
POLLER_WITH_WILL = """
import asyncio, sys, aiomqtt
async def main():
    will = aiomqtt.Will(sys.argv[2], b"offline", qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", int(sys.argv[1]), identifier=sys.argv[3], will=will) as client:
        await client.publish(sys.argv[2], b"online", qos=1, retain=True)
        print("online", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def mqtt_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    process = start_mqtt_broker(port=port, log_path=tmp_path_factory.mktemp("amqtt") / "broker.log")
    yield port
    stop_mqtt_broker(process)
    assert process.returncode == 0  # SIGTERM is a clean shutdown


def client(port: int, **options: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, **options)


async def receive(subscriber: aiomqtt.Client, count: int, timeout_s: float = 10.0) -> list[aiomqtt.Message]:
    """The next `count` messages the client gets, whatever their topic."""
    received: list[aiomqtt.Message] = []

    async def collect() -> None:
        async for message in subscriber.messages:
            received.append(message)
            if len(received) == count:
                return

    await within(collect(), timeout_s)
    return received


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_qos1_messages_arrive_in_order(mqtt_port: int) -> None:
    topic = f"{unique('evdash')}/site/cp-01/telemetry"
    async with client(mqtt_port) as subscriber, client(mqtt_port) as publisher:
        await subscriber.subscribe(topic, qos=1)
        for seq in range(50):
            await publisher.publish(topic, str(seq).encode(), qos=1)
        received = await receive(subscriber, 50)
    assert [int(message.payload) for message in received] == list(range(50))
    assert {message.qos for message in received} == {1}


async def test_a_late_subscriber_gets_the_retained_state(mqtt_port: int) -> None:
    topic = f"{unique('evdash')}/site/cp-01/state"
    async with client(mqtt_port) as publisher:
        await publisher.publish(topic, b'{"state": "offline"}', qos=1, retain=True)
        await publisher.publish(topic, b'{"state": "online"}', qos=1, retain=True)
    async with client(mqtt_port) as late:
        await late.subscribe(topic, qos=1)
        [message] = await receive(late, 1)
    assert (message.payload, message.retain) == (b'{"state": "online"}', True)


async def test_last_will_is_published_and_retained_when_a_client_dies(mqtt_port: int) -> None:
    topic = f"evdash/pollers/{unique('poller')}/state"
    async with client(mqtt_port) as watcher:
        await watcher.subscribe(topic, qos=1)
        poller = await asyncio.create_subprocess_exec(
            sys.executable, "-c", POLLER_WITH_WILL, str(mqtt_port), topic, unique("poller"), stdout=PIPE
        )
        try:
            assert poller.stdout is not None
            assert (await within(poller.stdout.readline())).strip() == b"online"
            [online] = await receive(watcher, 1)
            poller.kill()
            [will] = await receive(watcher, 1)
        finally:
            if poller.returncode is None:
                poller.kill()
            await within(poller.wait())
    assert (online.payload, will.payload) == (b"online", b"offline")
    async with client(mqtt_port) as late:  # the will was retained: a dashboard arriving later sees it too
        await late.subscribe(topic, qos=1)
        [retained] = await receive(late, 1)
    assert (retained.payload, retained.retain) == (b"offline", True)


async def test_persistent_session_keeps_qos1_messages_while_the_bridge_is_away(mqtt_port: int) -> None:
    """The bridge's session (clean_session false) gets, on return, what was published meanwhile.

    amqtt's own anonymous plugin would lose them: it marks sessions anonymous, and amqtt keeps
    nothing for those. Received as the bridge does: subscribe again, acknowledge each by hand;
    plain amqtt would stall that 5 s (it awaited the PUBACKs before reading the SUBSCRIBE).
    """
    prefix, bridge_id = unique("evdash"), unique("bridge")
    subscription = f"{prefix}/+/+/telemetry"
    async with client(mqtt_port, identifier=bridge_id, clean_session=False) as bridge:
        await bridge.subscribe(subscription, qos=1)
    async with client(mqtt_port) as poller:
        for seq in range(100):
            await poller.publish(f"{prefix}/site/cp-{seq % 2}/telemetry", str(seq).encode(), qos=1)
    bridge = client(mqtt_port, identifier=bridge_id, clean_session=False)
    bridge._client.manual_ack_set(True)
    received: list[aiomqtt.Message] = []
    async with bridge:
        await within(bridge.subscribe(subscription, qos=1), 2)
        async for message in bridge.messages:
            bridge._client.ack(message.mid, message.qos)
            received.append(message)
            if len(received) == 100:
                break
    assert [int(message.payload) for message in received] == list(range(100))
    assert {(message.qos, message.retain) for message in received} == {(1, False)}  # not retained messages


async def test_a_client_gets_only_the_retained_messages_of_its_own_subscriptions(mqtt_port: int) -> None:
    """amqtt alone sends a connecting client the retained messages matching anyone's subscription;
    the poller, which subscribes to nothing, would drop such a connection (LoopbackBroker)."""
    prefix = unique("evdash")
    async with client(mqtt_port) as watcher:
        await watcher.subscribe(f"{prefix}/#", qos=1)
        async with client(mqtt_port) as poller:
            await poller.publish(f"{prefix}/pollers/p1/state", b"online", qos=1, retain=True)
        await receive(watcher, 1)
        async with client(mqtt_port) as restarted_poller:  # connects while the watcher is subscribed
            with pytest.raises(TimeoutError):
                await receive(restarted_poller, 1, timeout_s=1.5)
            await restarted_poller.subscribe(f"{prefix}/pollers/+/state", qos=1)  # its own subscription: yes
            [retained] = await receive(restarted_poller, 1)
    assert (retained.payload, retained.retain) == (b"online", True)


def test_listens_on_loopback_only(mqtt_port: int) -> None:
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A"  # LISTEN
    ]
    assert f"0100007F:{mqtt_port:04X}" in listening  # 127.0.0.1, little-endian hex
    assert f"00000000:{mqtt_port:04X}" not in listening


def test_a_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedMqttBrokerError, match=f"127.0.0.1:{port} is already in use; set --mqtt-port"):
            start_mqtt_broker(port=port, log_path=tmp_path / "broker.log")
