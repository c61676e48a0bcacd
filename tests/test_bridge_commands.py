"""runbridge's command directions, as a real process between a real Mosquitto (passwords, ACL) and Tansu:
Kafka evdash.commands -> MQTT <prefix>/<site>/<cp>/commands, and MQTT .../command-results -> Kafka.

The subscriber on the commands topics logs in as the poller (whose ACL lets it read commands);
results are published as the poller too. Each test has command topics of its own.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from gateway.commands.messages import CommandMessage, CommandResult
from gateway.kafka.config import producer_options
from gateway.kafka.transport import KafkaTransport
from gateway.mqtt.bridge import Bridge
from gateway.mqtt.config import parse_mqtt_url
from gateway.mqtt.topics import commands_subscription, telemetry_subscription
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher
from tests.bridge_harness import BridgeProcess, TelemetrySource, bridge_env, decoded, last_stats
from tests.conftest import free_port
from tests.kafka_read import read_all
from tests.mosquitto import Mosquitto, mosquitto_fixture  # noqa: F401 (the `mosquitto` fixture)
from tests.processes import wait_until_async
from tests.tcp_proxy import CHUNK_BYTES, TcpProxy
from tests.test_bridge import DiskFullPublisher

SITE = "depot"
RECEIVE_TIMEOUT_S = 30.0


@pytest.fixture
def topics(kafka: dict) -> dict[str, str]:
    """This test's own Kafka command topics (the session's Tansu is shared by every test)."""
    suffix = kafka["TELEMETRY_TOPIC"].rsplit(".", 1)[-1]
    return {"commands": f"test.commands.{suffix}", "results": f"test.command-results.{suffix}"}


def start_bridge(
    tmp_path: Path, kafka: dict, topics: dict[str, str], url: str, log: str = "runbridge.log", **extra: str
) -> BridgeProcess:
    env = bridge_env(
        tmp_path,
        kafka,
        url,
        EVDASH_COMMANDS_TOPIC=topics["commands"],
        EVDASH_COMMAND_RESULTS_TOPIC=topics["results"],
        **extra,
    )
    return BridgeProcess(env, tmp_path / log)


def command(charge_point: str = "cp-1", *, expires_in_s: float = 30.0, value: float | None = 10.0) -> CommandMessage:
    now = datetime.now(UTC)
    return CommandMessage(
        id=str(uuid.uuid4()),
        charge_point=charge_point,
        site=SITE,
        action="set_current_limit" if value is not None else "pause",
        value=value,
        user="operator",
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s),
    )


async def produce(topic: str, *messages: tuple[bytes, bytes]) -> None:
    """(key, value) pairs to Kafka, in order, acknowledged (acks=all)."""
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


@asynccontextmanager
async def command_subscriber(broker: Mosquitto, **options: object) -> AsyncIterator[aiomqtt.Client]:
    """A client of the poller's user, subscribed (QoS 1) to the site's commands."""
    async with aiomqtt.Client(**broker.client_options("poller"), **options) as client:
        await client.subscribe(commands_subscription(SITE), qos=1)
        yield client


async def receive_until(client: aiomqtt.Client, last: CommandMessage) -> list[aiomqtt.Message]:
    """Every message up to and including the one carrying `last` (QoS 1 keeps a topic's order)."""
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(RECEIVE_TIMEOUT_S):
        async for message in client.messages:
            got.append(message)
            if CommandMessage.from_json(message.payload).id == last.id:
                return got
    raise AssertionError("the subscriber's connection ended")


def ids_and_topics(messages: list[aiomqtt.Message]) -> list[tuple[str, str]]:
    return [(CommandMessage.from_json(m.payload).id, m.topic.value) for m in messages]


async def test_a_command_reaches_the_commands_topic_of_its_charge_point_once(
    tmp_path: Path, kafka: dict, topics: dict[str, str], mosquitto: Mosquitto
) -> None:
    """Over TLS as the bridge's user: payload as received, QoS 1, each once, in order, not retained."""
    bridge = start_bridge(tmp_path, kafka, topics, mosquitto.url("bridge"), EVDASH_MQTT_CA_FILE=str(mosquitto.ca_file))
    try:
        async with command_subscriber(mosquitto) as subscriber:
            await bridge.logged("commands: consuming")
            sent = [command("cp-1"), command("cp-2", value=None), command("cp-1", value=16.0)]
            await produce(topics["commands"], *((c.key, c.to_json()) for c in sent))
            got = await receive_until(subscriber, sent[-1])
            assert ids_and_topics(got) == [(c.id, f"evdash/{SITE}/{c.charge_point}/commands") for c in sent]
            assert [m.payload for m in got] == [c.to_json() for c in sent]  # byte for byte
            assert {m.qos for m in got} == {1}

            # Nothing comes again before the next command; a poller subscribing later gets no old
            # one (nothing was retained), only the next.
            async with command_subscriber(mosquitto) as late:
                following = command("cp-3")
                await produce(topics["commands"], (following.key, following.to_json()))
                expected = [(following.id, f"evdash/{SITE}/cp-3/commands")]
                assert ids_and_topics(await receive_until(subscriber, following)) == expected
                assert ids_and_topics(await receive_until(late, following)) == expected
        await wait_until_async(
            lambda: last_stats(bridge.output()).get("commands_forwarded") == "4", 10, "the stats", bridge
        )
        code, _ = bridge.stop()
        output = bridge.output()
        assert code == 0, output[-3000:]
    finally:
        bridge.kill()
    assert "commands: publishing Kafka topic" in output and "mqtts://bridge@127.0.0.1" in output
    assert mosquitto.users["bridge"].password not in output
    assert "Traceback" not in output


async def test_malformed_and_expired_commands_are_skipped_and_logged_and_the_next_goes_through(
    tmp_path: Path, kafka: dict, topics: dict[str, str], mosquitto: Mosquitto
) -> None:
    expired = command("cp-1", expires_in_s=-1.0)
    not_a_command = orjson.dumps(command("cp-1").to_dict() | {"action": "reboot"})
    valid = command("cp-2")
    bridge = start_bridge(tmp_path, kafka, topics, mosquitto.url("bridge", tls=False))
    try:
        async with command_subscriber(mosquitto) as subscriber:
            await produce(
                topics["commands"],
                (b"cp-1", b"not json"),
                (b"cp-1", not_a_command),
                (expired.key, expired.to_json()),
                (valid.key, valid.to_json()),
            )
            got = await receive_until(subscriber, valid)
        assert ids_and_topics(got) == [(valid.id, f"evdash/{SITE}/cp-2/commands")]
        await wait_until_async(
            lambda: last_stats(bridge.output()).get("commands_skipped") == "3", 10, "the stats", bridge
        )
        code, _ = bridge.stop()
        output = bridge.output()
        assert code == 0, output[-3000:]
    finally:
        bridge.kill()
    # Rate-limited: the first malformed one is logged (with why), the second only counted.
    assert output.count("commands: skipped a message") == 1
    assert "not JSON" in output
    assert f"commands: dropped command {expired.id} (set_current_limit for cp-1), expired at" in output
    assert last_stats(output)["commands_forwarded"] == "1"
    assert "Traceback" not in output


async def test_a_result_published_on_mqtt_reaches_kafka_keyed_by_charge_point(
    tmp_path: Path, kafka: dict, topics: dict[str, str], mosquitto: Mosquitto
) -> None:
    """Results share the telemetry's way (outbox, PUBACK after persist); each goes to its own Kafka topic."""
    results = [
        CommandResult.applied(command("cp-1"), 10.0, poller="p1"),
        CommandResult.failed(command("cp-2"), "readback_mismatch", "expected 10 A, read 16 A", poller="p1"),
    ]
    source = TelemetrySource(mosquitto, charge_points=2)
    bridge = start_bridge(tmp_path, kafka, topics, mosquitto.url("bridge", tls=False))
    try:
        await bridge.logged("connected to MQTT broker")
        source.publish_round()
        for result in results:
            source.publish_raw(f"evdash/{SITE}/{result.charge_point}/command-results", result.to_json())
        source.publish_raw(f"evdash/{SITE}//command-results", results[0].to_json())  # names no charge point
        source.publish_round()
        await asyncio.to_thread(source.wait_all_acknowledged)
        await wait_until_async(
            lambda: last_stats(bridge.output()).get("forwarded") == "6", 30, "everything forwarded", bridge
        )
        code, _ = bridge.stop()
        output = bridge.output()
        assert code == 0, output[-3000:]
    finally:
        bridge.kill()
        source.close()

    stored = await read_all(topics["results"])
    assert sorted((m.key, m.value) for m in stored) == sorted((r.key, r.to_json()) for r in results)
    telemetry = decoded(await read_all(kafka["TELEMETRY_TOPIC"]))  # and no result among them
    assert sorted((r["charge_point"], r["seq"]) for r in telemetry) == [(cp, n) for cp in source.slugs for n in (1, 2)]
    stats = last_stats(output)
    assert (stats["received"], stats["results_received"], stats["malformed"]) == ("7", "2", "1")
    assert "dropped a message on 'evdash/depot//command-results'" in output


async def test_a_result_is_acknowledged_to_the_broker_only_once_stored(
    tmp_path: Path, kafka: dict, topics: dict[str, str], mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox cannot store: no PUBACK; the next bridge (same session) gets the result again and forwards it."""
    monkeypatch.setattr("gateway.mqtt.bridge.FLUSH_TIMEOUT_S", 1.0)
    outbox = tmp_path / "bridge.sqlite3"

    def bridge_with(publisher_class: type[OutboxPublisher]) -> Bridge:
        return Bridge(
            publisher_class(Outbox(outbox), KafkaTransport(kafka["TELEMETRY_TOPIC"])),
            kafka_topic=kafka["TELEMETRY_TOPIC"],
            config=parse_mqtt_url(mosquitto.url("bridge", tls=False)),
            client_id=f"bridge-{topics['results']}",
            subscription=telemetry_subscription(),
            stats_interval_s=60,
            results_topic=topics["results"],
        )

    result = CommandResult.applied(command("cp-1"), 10.0, poller="p1")
    source = TelemetrySource(mosquitto)
    try:
        failing = bridge_with(DiskFullPublisher)
        running = asyncio.create_task(failing.run(asyncio.Event()))
        await wait_until_async(lambda: failing.mqtt_connects == 1, 10, "the bridge to subscribe")
        await asyncio.to_thread(source.publish_raw, f"evdash/{SITE}/cp-1/command-results", result.to_json())
        with pytest.raises(OSError, match="No space left"):
            await asyncio.wait_for(running, 10)
        assert failing.received == failing.results_received == 0

        stop = asyncio.Event()
        healthy = bridge_with(OutboxPublisher)
        running = asyncio.create_task(healthy.run(stop))
        await wait_until_async(lambda: healthy.stats.forwarded >= 1, 20, "the result sent again")
        stop.set()
        await asyncio.wait_for(running, 20)
    finally:
        source.close()
    assert [(m.key, m.value) for m in await read_all(topics["results"])] == [(b"cp-1", result.to_json())]
    assert healthy.results_received == 1


async def test_commands_survive_an_mqtt_broker_restart_and_what_arrived_meanwhile_is_delivered(
    tmp_path: Path, kafka: dict, topics: dict[str, str]
) -> None:
    """The broker keeps the poller's persistent session on disk, as in production: what the bridge
    publishes after the restart waits there for the poller."""
    broker = Mosquitto(tmp_path / "mosquitto", persistence=True)
    session = {"identifier": f"poller-{topics['commands']}", "clean_session": False}
    with broker:
        bridge = start_bridge(tmp_path, kafka, topics, broker.url("bridge", tls=False))
        try:
            before = command("cp-1")
            async with command_subscriber(broker, **session) as subscriber:
                await produce(topics["commands"], (before.key, before.to_json()))
                assert ids_and_topics(await receive_until(subscriber, before)) == [
                    (before.id, f"evdash/{SITE}/cp-1/commands")
                ]
            await wait_until_async(
                lambda: last_stats(bridge.output()).get("commands_forwarded") == "1", 10, "the stats", bridge
            )

            broker.stop()
            await bridge.logged("commands: MQTT broker")  # lost, then unavailable while it is down
            meanwhile = [command("cp-1", value=8.0), command("cp-2", value=None)]
            await produce(topics["commands"], *((c.key, c.to_json()) for c in meanwhile))
            await bridge.logged("commands: MQTT broker", times=2)  # a reconnect failed: still down
            broker.start()

            async with aiomqtt.Client(**broker.client_options("poller"), **session) as subscriber:
                got = await receive_until(subscriber, meanwhile[-1])
            assert ids_and_topics(got) == [(c.id, f"evdash/{SITE}/{c.charge_point}/commands") for c in meanwhile]
            code, _ = bridge.stop()
            output = bridge.output()
            assert code == 0, output[-3000:]
        finally:
            bridge.kill()
    assert output.count("commands: publishing Kafka topic") == 2  # connected, then reconnected
    assert "commands: MQTT broker mqtt://bridge@127.0.0.1" in output
    assert last_stats(output)["commands_forwarded"] == "3"
    assert "Traceback" not in output


class StallingProxy(TcpProxy):
    """A TcpProxy that can also stall: it holds what it reads, as a network gone silent (no RST,
    no FIN) would; the bridge sees a PUBLISH go unanswered."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                await self.flowing.wait()
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


async def test_a_command_is_committed_only_after_its_puback(
    tmp_path: Path, kafka: dict, topics: dict[str, str], mosquitto: Mosquitto
) -> None:
    """The link to the broker goes silent with a PUBLISH in flight (no PUBACK comes). The bridge
    reconnects and publishes it again; stopped instead, it leaves the command's offset uncommitted
    and the next bridge publishes it. The bytes the silent link held are dropped, never delivered."""
    proxy = StallingProxy("127.0.0.1", mosquitto.port, free_port())
    await proxy.start()
    url = f"mqtt://bridge:{mosquitto.users['bridge'].password}@127.0.0.1:{proxy.port}"
    first = start_bridge(tmp_path, kafka, topics, url)
    second: BridgeProcess | None = None

    async def stall_with(pending: CommandMessage, bridge: BridgeProcess, times: int) -> None:
        proxy.flowing.clear()
        await produce(topics["commands"], (pending.key, pending.to_json()))
        await bridge.logged("lost (Operation timed out)", times=times)  # no PUBACK within MQTT_TIMEOUT_S

    async def reopen() -> None:
        await proxy.cut()  # what it held goes nowhere
        proxy.flowing.set()
        await proxy.restore()

    try:
        async with command_subscriber(mosquitto) as subscriber:  # straight to the broker
            # A long expiry: the next bridge joins the consumer group only after several seconds.
            before, retried, orphaned = command("cp-1"), command("cp-2"), command("cp-3", expires_in_s=300)
            await produce(topics["commands"], (before.key, before.to_json()))
            await receive_until(subscriber, before)
            await first.logged(f"published command {before.id}")  # its PUBACK is through: stall now

            await stall_with(retried, first, times=1)
            await reopen()
            assert ids_and_topics(await receive_until(subscriber, retried)) == [
                (retried.id, f"evdash/{SITE}/cp-2/commands")
            ]
            await first.logged(f"published command {retried.id}")

            await stall_with(orphaned, first, times=2)
            code, _ = await asyncio.to_thread(first.stop)  # the proxy lives on this loop: keep it running
            assert code == 0, first.output()[-3000:]
            await reopen()
            second = start_bridge(tmp_path, kafka, topics, url, log="runbridge-2.log")
            assert ids_and_topics(await receive_until(subscriber, orphaned)) == [
                (orphaned.id, f"evdash/{SITE}/cp-3/commands")
            ]
        code, _ = await asyncio.to_thread(second.stop)
        output = second.output()
        assert code == 0, output[-3000:]
    finally:
        first.kill()
        if second is not None:
            second.kill()
        await proxy.close()
    assert last_stats(output)["commands_forwarded"] == "1"
