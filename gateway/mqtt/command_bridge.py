"""The command half of the bridge (manage.py runbridge): Kafka evdash.commands -> MQTT, one QoS 1 PUBLISH each.

    Kafka evdash.commands --getmany--> CommandBridge --PUBLISH (QoS 1)--> MQTT <prefix>/<site>/<cp>/commands
          <----commit offset----------  (only after the broker's PUBACK)            --> the owning poller

The offset of a command is committed only once the broker acknowledged its PUBLISH, so a crash, a
broker outage or a Kafka outage loses no command: what is not committed is read again and
published again. A command can therefore reach MQTT twice; the poller journals each command id
before it writes, so a second copy is never executed (gateway/commands/__init__.py).

Not retained: a poller that subscribes later must not get an old command replayed (its
persistent session holds what was published while it was away). A command that is not a
CommandMessage is logged (rate-limited) and skipped; an expired one is dropped with a log line
(the poller would refuse it anyway). The consumer starts a new group at the earliest offset, so
no command published before its first commit is skipped; the old ones are expired and dropped.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiomqtt
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from gateway.commands.messages import CommandMessage, InvalidMessage
from gateway.conf import setting
from gateway.kafka.config import client_options
from gateway.kafka.topics import commands_topic as kafka_commands_topic
from gateway.mqtt.clients import aiomqtt_client
from gateway.mqtt.config import MqttConfig, mqtt_config
from gateway.mqtt.topics import commands_topic as mqtt_commands_topic
from gateway.runtime import Backoff

logger = logging.getLogger(__name__)

# Connect, PUBACK and disconnect each wait at most clients.MQTT_TIMEOUT_S: a stop ends within
# services.STOP_WITHIN_S even with an unresponsive broker.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 10.0
# getmany returns at least this often, so a stop or a lost MQTT connection is noticed within it.
GETMANY_TIMEOUT_MS = 500
# An empty fetch waits this long on the broker: a command is latency, not throughput (see the
# note on FETCH_MAX_WAIT_MS in gateway/kafka/consumer.py: Tansu answers an empty fetch only then).
FETCH_MAX_WAIT_MS = 10
MAX_RECORDS = 100
# Malformed and expired commands are logged at most this often each; every one is counted.
SKIPPED_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class CommandBridgeStats:
    """What the command half did since it started (part of the bridge's stats line)."""

    forwarded: int  # commands the MQTT broker acknowledged (PUBACK)
    malformed: int  # Kafka messages that are not commands: skipped
    expired: int  # commands past their expiry: dropped
    mqtt_connects: int


class _SkipLog:
    """A count of skipped messages and a warning at most every SKIPPED_LOG_INTERVAL_S (they may come in floods)."""

    def __init__(self) -> None:
        self.count = 0
        self._logged_at: float | None = None

    def note(self, message: str, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= SKIPPED_LOG_INTERVAL_S:
            self._logged_at = now
            logger.warning(message + "; %d such so far", *args, self.count)


class CommandBridge:
    """Publishes each command from Kafka to its charge point's MQTT topic; commits after the PUBACK."""

    def __init__(self, *, kafka_topic: str, group_id: str, config: MqttConfig, client_id: str) -> None:
        self.kafka_topic = kafka_topic
        self.group_id = group_id
        self.config = config
        self.client_id = client_id
        self.forwarded = 0
        self.mqtt_connects = 0
        self._malformed = _SkipLog()
        self._expired = _SkipLog()
        self._client: aiomqtt.Client | None = None  # connected (or lost, until _connected notices)
        self._lost: aiomqtt.MqttError | None = None  # why the last PUBLISH failed: reconnect
        self._backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)

    @property
    def stats(self) -> CommandBridgeStats:
        return CommandBridgeStats(self.forwarded, self._malformed.count, self._expired.count, self.mqtt_connects)

    async def run(self, stop: asyncio.Event) -> None:
        """Kafka sessions, with backoff in between, until stop is set; the MQTT connection is made
        (and made again after a loss) as commands need it, and outlives a Kafka session.

        An MQTT outage does not end the Kafka session: a group rejoin costs seconds to tens of
        seconds (the broker waits out the old member), longer than many commands live.
        """
        backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
        try:
            while not stop.is_set():
                consumer = AIOKafkaConsumer(
                    self.kafka_topic,
                    group_id=self.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                    **client_options(),
                )
                try:
                    await consumer.start()
                    backoff.reset()
                    logger.info("commands: consuming %s as group %s", self.kafka_topic, self.group_id)
                    await self._forward_batches(consumer, stop)
                except (KafkaError, OSError) as exc:
                    logger.warning("commands: Kafka unavailable (%s); reconnecting in %.1f s", exc, backoff.peek_s())
                    if await backoff.wait(stop):
                        break
                finally:
                    with contextlib.suppress(KafkaError, OSError):
                        await consumer.stop()
        finally:
            await self._disconnect()
        logger.info("commands: stopped")

    async def _forward_batches(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        # Connected before each fetch: a loss is noticed (and logged) while idle, and what Kafka
        # receives during an MQTT outage waits there, uncommitted, until the broker is back.
        while not stop.is_set() and await self._connected(stop) is not None:
            batches = await consumer.getmany(timeout_ms=GETMANY_TIMEOUT_MS, max_records=MAX_RECORDS)
            for partition, messages in batches.items():
                await self._forward_partition(consumer, partition, messages, stop)

    async def _forward_partition(
        self, consumer: AIOKafkaConsumer, partition: TopicPartition, messages: list[ConsumerRecord], stop: asyncio.Event
    ) -> None:
        """Publish in order, then commit what the broker acknowledged (also when a stop came first)."""
        next_offset: int | None = None
        try:
            for message in messages:
                if not await self._forward(message, stop):
                    break  # stopped: the rest is read again at the next start
                next_offset = message.offset + 1
        finally:
            if next_offset is not None:
                await consumer.commit({partition: next_offset})

    async def _forward(self, message: ConsumerRecord, stop: asyncio.Event) -> bool:
        """Publish one command and wait for its PUBACK, through MQTT outages; False if stopped first."""
        try:
            command = CommandMessage.from_json(message.value)
        except InvalidMessage as exc:
            self._malformed.note(
                "commands: skipped a message at %s[%d] offset %d, not a command (%s)",
                message.topic,
                message.partition,
                message.offset,
                exc,
            )
            return True
        if command.expired():
            self._expired.note(
                "commands: dropped command %s (%s for %s), expired at %s",
                command.id,
                command.action,
                command.charge_point,
                command.expires_at.isoformat(),
            )
            return True
        topic = mqtt_commands_topic(command.site, command.charge_point)
        while (client := await self._connected(stop)) is not None:
            try:
                # The payload as received: the poller reads the bytes the server wrote.
                await client.publish(topic, message.value, qos=1, retain=False)
            except aiomqtt.MqttError as exc:
                self._lost = exc  # published again once connected (the broker may have it twice)
                continue
            self.forwarded += 1
            logger.debug("commands: published command %s (%s) for %s", command.id, command.action, command.charge_point)
            return True
        return False

    async def _connected(self, stop: asyncio.Event) -> aiomqtt.Client | None:
        """The MQTT client, connecting (again) with backoff if needed; None once stop is set."""
        client = self._client
        # aiomqtt tells a lost connection only to a pending call or the message iterator; while
        # idle we have neither, so its own `_disconnected` future is read, as its iterator does.
        if client is not None and self._lost is None and not client._disconnected.done():
            return client
        broker = str(self.config)  # never the password
        if client is not None:
            reason = self._lost or _disconnect_reason(client)
            await self._disconnect()
            logger.warning(
                "commands: MQTT broker %s lost (%s); reconnecting in %.1f s", broker, reason, self._backoff.peek_s()
            )
            if await self._backoff.wait(stop):
                return None
        while not stop.is_set():
            client = self._new_client()
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                logger.warning(
                    "commands: MQTT broker %s unavailable (%s); retrying in %.1f s", broker, exc, self._backoff.peek_s()
                )
                if await self._backoff.wait(stop):
                    return None
                continue
            self._client, self._lost = client, None
            self.mqtt_connects += 1
            self._backoff.reset()
            logger.info(
                "commands: publishing Kafka topic %s to MQTT broker %s as %s", self.kafka_topic, broker, self.client_id
            )
            return client
        return None

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    @property
    def connected(self) -> bool:
        """Connected to the MQTT broker now (readiness probes read it)."""
        return self._client is not None

    def _new_client(self) -> aiomqtt.Client:
        # A clean session: this client subscribes to nothing, and a PUBLISH cut off by a lost
        # connection is published again (its offset was not committed).
        return aiomqtt_client(self.config, self.client_id, persistent=False)


def _disconnect_reason(client: aiomqtt.Client) -> str:
    lost = client._disconnected
    error = None if lost.cancelled() or not lost.done() else lost.exception()
    return str(error) if error is not None else "disconnected"


def build_command_bridge() -> CommandBridge:
    """The command half as the settings describe it: group and MQTT client id after BRIDGE_CLIENT_ID."""
    client_id = f"{setting('BRIDGE_CLIENT_ID')}-commands"
    return CommandBridge(
        kafka_topic=kafka_commands_topic(),
        group_id=client_id,
        config=mqtt_config(),
        client_id=client_id,
    )
