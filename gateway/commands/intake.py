"""Where a poller's commands come from: Kafka evdash.commands (direct) or its site's MQTT commands topics (edge).

Each source decodes the messages (a malformed one is logged, rate-limited, and skipped: never
executed) and hands every command to `deliver` (CommandRunner.deliver), which answers at once:
queued on its charge point, answered from the journal, or ignored (another poller's). A source
rides out broker outages, reconnecting with backoff and saying so in the log.

Kafka: every poller reads ALL partitions in a group of its own (evdash-poller-<id>), so each
poller sees every command and executes those of its charge points. The partitions are assigned,
not subscribed: one process per poller id (its journal's lock), so a group rebalance would only
delay a restarted poller by a session timeout. A new group starts at the end of the topic, and
commits that start at once. An offset is committed only once the command it carries has expired
and had time for its result (HOLD_AFTER_EXPIRY_S): a poller killed before then reads the command
again after its restart, and the journal answers it (executed now if it was never claimed, its
result again, or failed interrupted). Redelivery is safe; skipping a command the poller never
took is not. Partitions added to the topic later are read after the next reconnect or restart.

MQTT: QoS 1 with a persistent session (clean_session False, client id
evdash-poller-<id>-commands), so the broker keeps the commands that arrive while the poller is
away. A message is acknowledged after deliver() returned (it is queued or answered by then).
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from gateway.commands.messages import CommandMessage, InvalidMessage
from gateway.kafka.config import client_options
from gateway.kafka.topics import commands_topic
from gateway.mqtt.config import MqttConfig, mqtt_config
from gateway.mqtt.topics import commands_subscription, parse_charge_point_topic
from gateway.runtime import Backoff

if TYPE_CHECKING:
    import aiomqtt

logger = logging.getLogger(__name__)

Deliver = Callable[[CommandMessage], None]

# A malformed message may repeat at its publisher's rate: logged at most this often, all counted.
MALFORMED_LOG_INTERVAL_S = 60.0
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 10.0
# Kafka: how long after a command's expiry its offset stays uncommitted. Its write is claimed
# before the expiry; a profile's settle_s is at most 60 s, plus a write and a read back.
HOLD_AFTER_EXPIRY_S = 90.0
HOLD_AT_MOST_S = 3600.0  # whatever expires_at says (a clock gone wrong must not stop commits)
COMMIT_EVERY_S = 1.0
COMMIT_TIMEOUT_S = 5.0
STOP_COMMIT_TIMEOUT_S = 2.0
# Kafka answers a fetch as soon as a command arrives, so the wait costs no latency there; it bounds
# the empty fetches while no command comes (Tansu, which answers only when the wait ends, adds up
# to it). At 10 ms the poller's CPU per record at 5,000 charge points rose ~2 µs (bench/poller.py).
FETCH_MAX_WAIT_MS = 100
GETMANY_TIMEOUT_MS = 500
# MQTT: connect, subscribe and disconnect each wait at most gateway.mqtt.clients.MQTT_TIMEOUT_S
# (a stop stays within services.STOP_WITHIN_S with an unresponsive broker).


class MalformedLog:
    """Counts the messages a source skipped and logs them, at most once per interval."""

    def __init__(self, source: str, interval_s: float = MALFORMED_LOG_INTERVAL_S) -> None:
        self.source = source
        self.interval_s = interval_s
        self.count = 0
        self._logged_at: float | None = None

    def note(self, where: str, error: Exception) -> None:
        self.count += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self.interval_s:
            self._logged_at = now
            logger.warning(
                "skipped a malformed command on %s %s (%s); %d malformed commands so far",
                self.source,
                where,
                error,
                self.count,
            )


def _deliver(deliver: Deliver, command: CommandMessage) -> None:
    """deliver(), a failure of which (a bug, a broken journal file) is this command's alone."""
    try:
        deliver(command)
    except Exception:
        logger.exception("could not take command %s for %s", command.id, command.charge_point)


class KafkaCommandSource:
    """Every partition of the commands topic, in the poller's own consumer group."""

    def __init__(self, *, poller_id: str, topic: str | None = None) -> None:
        self.topic = topic or commands_topic()
        self.group_id = f"evdash-poller-{poller_id}"
        self.received = 0
        self.malformed = MalformedLog(f"Kafka topic {self.topic}")
        # Set once the partitions are assigned and their positions known: a command published
        # from then on is seen (a new group starts at the end of the topic).
        self.ready = asyncio.Event()
        self._reconnect = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
        # Per partition: the offsets taken and not released, in order, with when each may be; the
        # offset after the last one taken; the offset last committed.
        self._held: dict[TopicPartition, deque[tuple[int, datetime]]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int | None] = {}
        self._committed_at = 0.0

    async def run(self, stop: asyncio.Event, deliver: Deliver) -> None:
        """Deliver commands until stop is set, reconnecting after broker outages."""
        while not stop.is_set():
            try:
                await self._consume(stop, deliver)
            except (KafkaError, OSError) as exc:
                self.ready.clear()
                logger.warning(
                    "Kafka unavailable for commands (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__,
                    exc,
                    self._reconnect.peek_s(),
                )
                await self._reconnect.wait(stop)

    async def _consume(self, stop: asyncio.Event, deliver: Deliver) -> None:
        consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **client_options(),
        )
        # What the last connection held is read again from the committed offsets.
        self._held, self._next, self._committed = {}, {}, {}
        try:
            await consumer.start()
            partitions = await self._partitions(consumer, stop)
            if not partitions:
                return  # stopped while waiting for the topic
            consumer.assign(partitions)
            for partition in partitions:
                self._held[partition] = deque()
                # The committed offset, else (a new group) the end of the partition.
                self._next[partition] = await consumer.position(partition)
                self._committed[partition] = await consumer.committed(partition)
            # A new group's start is committed at once: a poller killed before its first commit
            # must start there again, not at the end, or it would skip what it had not finished.
            await self._commit_released(consumer)
            self._reconnect.reset()
            self.ready.set()
            logger.info(
                "taking commands from Kafka topic %s (%d partitions) as group %s",
                self.topic,
                len(partitions),
                self.group_id,
            )
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=GETMANY_TIMEOUT_MS)
                for partition, messages in batches.items():
                    for message in messages:
                        self._take(partition, message, deliver)
                if time.monotonic() - self._committed_at >= COMMIT_EVERY_S:
                    await self._commit_released(consumer)
            await self._commit_released(consumer, STOP_COMMIT_TIMEOUT_S)
        finally:
            self.ready.clear()
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> list[TopicPartition]:
        """All partitions of the topic, waiting (and saying so once) while it does not exist."""
        waited = False
        backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
        while not (numbers := consumer.partitions_for_topic(self.topic)):
            await consumer.topics()  # refreshes the metadata
            if numbers := consumer.partitions_for_topic(self.topic):
                break
            if not waited:
                logger.warning("Kafka topic %s does not exist (yet); waiting for it", self.topic)
                waited = True
            if await backoff.wait(stop):
                return []
        return [TopicPartition(self.topic, number) for number in sorted(numbers)]

    def _take(self, partition: TopicPartition, message: ConsumerRecord, deliver: Deliver) -> None:
        self.received += 1
        now = datetime.now(UTC)
        release_at = now
        try:
            command = CommandMessage.from_json(message.value)
        except InvalidMessage as exc:
            self.malformed.note(f"partition {partition.partition} offset {message.offset}", exc)
        else:
            release_at = min(command.expires_at, now + timedelta(seconds=HOLD_AT_MOST_S)) + timedelta(
                seconds=HOLD_AFTER_EXPIRY_S
            )
            _deliver(deliver, command)
        self._held.setdefault(partition, deque()).append((message.offset, release_at))
        self._next[partition] = message.offset + 1

    async def _commit_released(self, consumer: AIOKafkaConsumer, timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        """Commit, per partition, up to the first offset still held (all taken if none is); a failure
        leaves it for the next time."""
        self._committed_at = time.monotonic()
        now = datetime.now(UTC)
        offsets: dict[TopicPartition, int] = {}
        for partition, held in self._held.items():
            while held and held[0][1] <= now:
                held.popleft()
            offset = held[0][0] if held else self._next[partition]
            if offset != self._committed.get(partition):
                offsets[partition] = offset
        if not offsets:
            return
        try:
            # The client retries a commit until the broker answers: bounded, so that a stop is not held up.
            await asyncio.wait_for(consumer.commit(offsets), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            # Uncommitted offsets are only read again (and answered from the journal) after a restart.
            logger.warning("could not commit command offsets (%s); trying again later", exc or type(exc).__name__)
            return
        self._committed.update(offsets)


class MqttCommandSource:
    """The commands topics of the poller's site (every site's without one), QoS 1, persistent session."""

    def __init__(self, *, site: str | None, poller_id: str, config: MqttConfig | None = None) -> None:
        self.config = config or mqtt_config()
        self.subscription = commands_subscription(site)
        self.client_id = f"evdash-poller-{poller_id}-commands"
        self.received = 0
        self.connects = 0
        self.malformed = MalformedLog(f"MQTT {self.subscription}")
        self.ready = asyncio.Event()  # subscribed: commands published from now on reach us

    async def run(self, stop: asyncio.Event, deliver: Deliver) -> None:
        """Deliver commands until stop is set; one connection after another, with backoff in between."""
        import aiomqtt

        backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
        broker = str(self.config)  # mqtts://user@host:port: never the password
        while not stop.is_set():
            client = self._new_client()
            connected = False
            try:
                async with client:
                    connected = True
                    self.connects += 1
                    backoff.reset()
                    await client.subscribe(self.subscription, qos=1)
                    self.ready.set()
                    logger.info(
                        "taking commands from MQTT broker %s, %s as %s (persistent session)",
                        broker,
                        self.subscription,
                        self.client_id,
                    )
                    await self._take_until_stopped(client, stop, deliver)
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                delay_s = backoff.peek_s()
                if connected:
                    logger.warning("lost the MQTT broker %s (%s); reconnecting in %.1f s", broker, exc, delay_s)
                else:
                    logger.warning("MQTT broker %s unavailable (%s); retrying in %.1f s", broker, exc, delay_s)
                if await backoff.wait(stop):
                    break
        self.ready.clear()

    def _new_client(self) -> "aiomqtt.Client":
        from gateway.mqtt.clients import aiomqtt_client

        # Acknowledged once deliver() returned, not on arrival.
        return aiomqtt_client(self.config, self.client_id, persistent=True, manual_ack=True)

    async def _take_until_stopped(self, client: "aiomqtt.Client", stop: asyncio.Event, deliver: Deliver) -> None:
        """Take messages until stop is set or the connection drops (then raises aiomqtt.MqttError)."""
        taking = asyncio.create_task(self._take_all(client, deliver))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not taking.done():
                taking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await taking
        if not taking.cancelled():
            taking.result()

    async def _take_all(self, client: "aiomqtt.Client", deliver: Deliver) -> None:
        async for message in client.messages:
            self._take(message, deliver)
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)

    def _take(self, message: "aiomqtt.Message", deliver: Deliver) -> None:
        self.received += 1
        topic = message.topic.value
        try:
            site, charge_point = parse_charge_point_topic(topic, "commands")
            payload = message.payload
            command = CommandMessage.from_json(bytes(payload) if isinstance(payload, bytes | bytearray) else None)
            if (command.site, command.charge_point) != (site, charge_point):
                raise InvalidMessage(f"it is for {command.site}/{command.charge_point}, not for this topic's")
        except (InvalidMessage, ValueError) as exc:  # InvalidMessage is a ValueError; so is a bad topic
            self.malformed.note(topic, exc)
            return
        _deliver(deliver, command)


def build_command_source(output: str, *, site: str | None, poller_id: str) -> KafkaCommandSource | MqttCommandSource:
    """The command source of a poller publishing to `output`: commands come the way its telemetry goes."""
    if output == "mqtt":
        return MqttCommandSource(site=site, poller_id=poller_id)
    return KafkaCommandSource(poller_id=poller_id)
