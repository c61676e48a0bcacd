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
from gateway.mqtt.config import MqttConfig, mqtt_config, ssl_context
from gateway.mqtt.topics import commands_topic as mqtt_commands_topic
from gateway.runtime import Backoff

logger = logging.getLogger(__name__)

# Connect, PUBACK and disconnect each wait at most this long: a stop ends within
# services.STOP_WITHIN_S even with an unresponsive broker.
MQTT_TIMEOUT_S = 5.0
KEEPALIVE_S = 30
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

    @property
    def stats(self) -> CommandBridgeStats:
        return CommandBridgeStats(self.forwarded, self._malformed.count, self._expired.count, self.mqtt_connects)

    async def run(self, stop: asyncio.Event) -> None:
        """One MQTT connection after another, with backoff in between, until stop is set."""
        backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
        broker = str(self.config)  # never the password
        while not stop.is_set():
            connected = False
            try:
                async with self._new_client() as client:
                    connected = True
                    self.mqtt_connects += 1
                    backoff.reset()
                    logger.info(
                        "commands: publishing Kafka topic %s to MQTT broker %s as %s",
                        self.kafka_topic,
                        broker,
                        self.client_id,
                    )
                    await self._consume_until_stopped(client, stop)
            except aiomqtt.MqttError as exc:
                delay_s = backoff.peek_s()
                if connected:
                    logger.warning("commands: MQTT broker %s lost (%s); reconnecting in %.1f s", broker, exc, delay_s)
                else:
                    logger.warning(
                        "commands: MQTT broker %s unavailable (%s); retrying in %.1f s", broker, exc, delay_s
                    )
                if await backoff.wait(stop):
                    break
        logger.info("commands: stopped")

    def _new_client(self) -> aiomqtt.Client:
        # A clean session: this client subscribes to nothing, and a PUBLISH cut off by a lost
        # connection is published again from Kafka (its offset was not committed).
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            username=self.config.username or None,
            password=self.config.password or None,
            identifier=self.client_id,
            clean_session=True,
            tls_context=ssl_context(self.config),
            keepalive=KEEPALIVE_S,
            timeout=MQTT_TIMEOUT_S,
        )

    async def _consume_until_stopped(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Kafka sessions, with backoff in between, on one MQTT connection; raises MqttError when it drops."""
        backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
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
                await self._forward_batches(consumer, client, stop)
            except (KafkaError, OSError) as exc:
                logger.warning("commands: Kafka unavailable (%s); reconnecting in %.1f s", exc, backoff.peek_s())
                if await backoff.wait(stop):
                    break
            finally:
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()

    async def _forward_batches(self, consumer: AIOKafkaConsumer, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while not stop.is_set():
            _raise_if_disconnected(client)
            batches = await consumer.getmany(timeout_ms=GETMANY_TIMEOUT_MS, max_records=MAX_RECORDS)
            for partition, messages in batches.items():
                await self._forward_partition(consumer, client, partition, messages, stop)

    async def _forward_partition(
        self,
        consumer: AIOKafkaConsumer,
        client: aiomqtt.Client,
        partition: TopicPartition,
        messages: list[ConsumerRecord],
        stop: asyncio.Event,
    ) -> None:
        """Publish in order, then commit what the broker acknowledged (also when a PUBLISH failed)."""
        next_offset: int | None = None
        try:
            for message in messages:
                if stop.is_set():
                    break  # the rest is read again at the next start
                await self._forward(client, message)
                next_offset = message.offset + 1
        finally:
            if next_offset is not None:
                await consumer.commit({partition: next_offset})

    async def _forward(self, client: aiomqtt.Client, message: ConsumerRecord) -> None:
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
            return
        if command.expired():
            self._expired.note(
                "commands: dropped command %s (%s for %s), expired at %s",
                command.id,
                command.action,
                command.charge_point,
                command.expires_at.isoformat(),
            )
            return
        # The payload as received: the poller reads the same bytes the server wrote.
        await client.publish(
            mqtt_commands_topic(command.site, command.charge_point), message.value, qos=1, retain=False
        )
        self.forwarded += 1
        logger.debug("commands: published command %s (%s) for %s", command.id, command.action, command.charge_point)


def _raise_if_disconnected(client: aiomqtt.Client) -> None:
    """aiomqtt tells a lost connection only to a pending call or the message iterator (we have
    neither while idle): its own `_disconnected` future, read as MessagesIterator reads it."""
    lost = client._disconnected
    if lost.done():
        raise aiomqtt.MqttError("connection lost") from (None if lost.cancelled() else lost.exception())


def build_command_bridge() -> CommandBridge:
    """The command half as the settings describe it: group and MQTT client id after BRIDGE_CLIENT_ID."""
    client_id = f"{setting('BRIDGE_CLIENT_ID')}-commands"
    return CommandBridge(
        kafka_topic=kafka_commands_topic(),
        group_id=client_id,
        config=mqtt_config(),
        client_id=client_id,
    )
