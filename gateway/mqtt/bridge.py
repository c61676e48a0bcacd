"""The bridge (manage.py runbridge): MQTT telemetry and command results -> durable outbox -> Kafka;
Kafka commands -> MQTT (gateway.mqtt.command_bridge).

    MQTT broker --PUBLISH (QoS 1)--> Bridge --publish_encoded, persist()--> Outbox (SQLite WAL)
                <-------PUBACK--------  (only once persisted)                 |
                                                   OutboxPublisher --KafkaTransport--> Kafka

A message is acknowledged to the broker only once it is on disk in the outbox, and leaves the
outbox only once Kafka acknowledged it (acks=all), so a crash anywhere loses nothing: what we did
not acknowledge, the broker keeps for our persistent session (clean_session=False, the same client
id) and sends again when we are back. The payload goes to Kafka as received, keyed by the charge
point named in the topic; the consumer validates it (and dead-letters what is not telemetry).

Delivery is at least once, order per charge point kept. A message is written to Kafka twice only
if the bridge or a connection failed in one of three short windows: persisted but its PUBACK not
yet sent (the broker sends it again), acknowledged by Kafka but not yet removed from the outbox
(sent again on restart), or in flight to Kafka when that connection broke. The copies are
identical, and the record's (charge point, seq, ts) tells them apart.

Command results (<prefix>/<site>/<cp>/command-results) take the same way to Kafka
evdash.command-results, with the same guarantee: the consumer stores the first result of a
command id, so a copy changes nothing. So do the site controllers' statuses (<prefix>/<site>/site-status)
to Kafka evdash.site-status, keyed by site: a copy is the same (site, at), stored once.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import aiomqtt

from gateway.conf import setting
from gateway.kafka.topics import command_results_topic, site_status_topic, telemetry_topic
from gateway.kafka.transport import KafkaTransport
from gateway.mqtt.clients import aiomqtt_client
from gateway.mqtt.command_bridge import CommandBridge, build_command_bridge
from gateway.mqtt.config import MqttConfig, mqtt_config
from gateway.mqtt.topics import (
    command_results_subscription,
    parse_charge_point_topic,
    parse_site_status_topic,
    parse_telemetry_topic,
    site_status_subscription,
    telemetry_subscription,
)
from gateway.publish.outbox import Outbox, outbox_path
from gateway.publish.publisher import OutboxPublisher
from gateway.runtime import Backoff, wait_unless_stopped

logger = logging.getLogger(__name__)

# Messages taken from the client's queue per outbox transaction: one commit and one round of
# PUBACKs each. The broker's in-flight window (Mosquitto's max_inflight_messages, 20 by default)
# usually keeps batches far smaller.
BATCH_AT_MOST = 5_000
GATHER_TURNS_AT_MOST = 100
# After SIGTERM, how long the bridge keeps trying to hand the outbox to Kafka; what is left stays
# on disk for the next start. With the MQTT disconnect, runbridge exits within services.STOP_WITHIN_S.
FLUSH_TIMEOUT_S = 10.0
# Connect, subscribe and disconnect each wait at most clients.MQTT_TIMEOUT_S (5 s): with
# FLUSH_TIMEOUT_S, a stop ends within services.STOP_WITHIN_S even with an unresponsive broker.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 10.0
# A message on a topic that names no charge point is logged at most this often (it may repeat at
# the publisher's rate); every one is counted.
MALFORMED_LOG_INTERVAL_S = 60.0
# Records older than this in the outbox mean Kafka is not taking them: a backlog, replayed once it
# is back (the publisher logs the outage; the ReplayWatch logs the replay).
BACKLOG_AGE_S = 5.0
CAUGHT_UP_AGE_S = 1.0  # ... and the backlog is gone when the oldest record waiting is younger than this
WATCH_EVERY_S = 1.0
WATCH_BACKLOG_EVERY_S = 0.01  # finer while a backlog drains (tens of thousands go in well under a second)


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """What the bridge did since it started: logged every BRIDGE_STATS_INTERVAL_S."""

    received: int  # MQTT messages taken from the broker (and acknowledged to it)
    forwarded: int  # records Kafka acknowledged
    buffered: int  # records in the outbox, waiting for Kafka
    oldest_buffered_age_s: float | None  # age of the oldest of them; None when none waits
    malformed: int  # messages on a topic that names no charge point: acknowledged and dropped
    dropped: int  # records the outbox dropped at its size or age limit (oldest first)
    mqtt_connects: int  # successful connections to the MQTT broker
    # Added with the commands (bench/edge.py reads the fields above by position: keep these last).
    results_received: int = 0  # of `received`: command results (the rest is telemetry)
    commands_forwarded: int = 0  # commands from Kafka the MQTT broker acknowledged
    commands_skipped: int = 0  # commands not forwarded: malformed or expired
    site_statuses_received: int = 0  # of `received`: site controllers' statuses

    def as_dict(self) -> dict[str, int | float | None]:
        return asdict(self)

    def log_line(self) -> str:
        age = "none" if self.oldest_buffered_age_s is None else f"{self.oldest_buffered_age_s:.1f}"
        return (
            f"bridge stats: received={self.received} forwarded={self.forwarded} buffered={self.buffered} "
            f"oldest_buffered_age_s={age} malformed={self.malformed} dropped={self.dropped} "
            f"mqtt_connects={self.mqtt_connects} results_received={self.results_received} "
            f"commands_forwarded={self.commands_forwarded} commands_skipped={self.commands_skipped} "
            f"site_statuses_received={self.site_statuses_received}"
        )


class ReplayWatch:
    """Notices a backlog in the outbox (Kafka away) and logs once it is replayed: how many records
    it held, how many went out since, how long the oldest waited.

    From inside, the bridge cannot tell when Kafka came back (a send can hang through the end of
    the outage and then succeed), so it reports no rate; the outage test measures the rate from
    the moment it restores Kafka to this line.
    """

    def __init__(self) -> None:
        self.in_backlog = False
        self.peak_buffered = 0
        self.backlog_since_s = 0.0  # time.monotonic() when the oldest waiting record was stored
        self.delivered_before = 0

    def observe(self, now_s: float, delivered: int, buffered: int, oldest_age_s: float | None) -> None:
        age_s = oldest_age_s or 0.0
        if not self.in_backlog:
            if age_s > BACKLOG_AGE_S:
                self.in_backlog, self.peak_buffered, self.backlog_since_s = True, buffered, now_s - age_s
                self.delivered_before = delivered
            return
        self.peak_buffered = max(self.peak_buffered, buffered)
        if age_s < CAUGHT_UP_AGE_S:
            self.in_backlog = False
            logger.info(
                "Kafka backlog replayed: %d records delivered since it came back; up to %d records were "
                "buffered, the oldest for %.1f s",
                delivered - self.delivered_before,
                self.peak_buffered,
                now_s - self.backlog_since_s,
            )


class Bridge:
    """Takes telemetry (and, with results_topic, command results; with site_status_topic, the site
    controllers' statuses) from the MQTT broker into the outbox, and from there to Kafka."""

    def __init__(
        self,
        publisher: OutboxPublisher,
        *,
        kafka_topic: str,
        config: MqttConfig,
        client_id: str,
        subscription: str,
        stats_interval_s: float,
        results_topic: str | None = None,
        command_bridge: CommandBridge | None = None,
        site_status_topic: str | None = None,
    ) -> None:
        self.publisher = publisher
        self.kafka_topic = kafka_topic
        self.config = config
        self.client_id = client_id
        self.subscription = subscription
        self.stats_interval_s = stats_interval_s
        self.results_topic = results_topic  # Kafka topic of command results; None: telemetry only
        self.command_bridge = command_bridge  # only its counters, for the stats line
        self.site_status_topic = site_status_topic  # Kafka topic of site statuses; None: not forwarded
        self.received = 0
        self.results_received = 0
        self.site_statuses_received = 0
        self.malformed = 0
        self.mqtt_connects = 0
        self.mqtt_connected = False  # connected to the MQTT broker now (readiness probes read it)
        self._malformed_logged_at: float | None = None
        self.replay_watch = ReplayWatch()
        self._closed = False  # the outbox is closed: its age can no longer be read
        # Told of each batch once persisted and acknowledged: (its messages, time.time() then). The
        # pipeline page samples its MQTT hop here (gateway/pipeline); cheap, must not raise.
        self.batch_observers: list[Callable[[Sequence[aiomqtt.Message], float], None]] = []

    @property
    def subscriptions(self) -> list[str]:
        subscriptions = [self.subscription]
        if self.results_topic is not None:
            subscriptions.append(command_results_subscription())
        if self.site_status_topic is not None:
            subscriptions.append(site_status_subscription())
        return subscriptions

    @property
    def stats(self) -> BridgeStats:
        published = self.publisher.stats
        commands = self.command_bridge.stats if self.command_bridge is not None else None
        return BridgeStats(
            received=self.received,
            forwarded=published.delivered,
            buffered=published.buffered,
            oldest_buffered_age_s=None if self._closed else published.oldest_age_s,
            malformed=self.malformed,
            dropped=published.dropped,
            mqtt_connects=self.mqtt_connects,
            results_received=self.results_received,
            commands_forwarded=commands.forwarded if commands else 0,
            commands_skipped=commands.malformed + commands.expired if commands else 0,
            site_statuses_received=self.site_statuses_received,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until stop is set; then stop taking messages, flush the outbox to Kafka, close."""
        await self.publisher.start()
        stats_logger = asyncio.create_task(self._watch_until_stopped(stop))
        try:
            await self._take_messages_until_stopped(stop)
        finally:
            stats_logger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats_logger
            await self.publisher.close(flush_timeout_s=FLUSH_TIMEOUT_S)
            self._closed = True
            if self.command_bridge is None:  # else run_bridge logs it once both halves are done
                self.log_stopped()

    def log_stopped(self) -> None:
        """The last stats line, once the run is over (the tests read it: keep the wording)."""
        logger.info("bridge stopped: %s", self.stats.log_line().removeprefix("bridge stats: "))

    async def _take_messages_until_stopped(self, stop: asyncio.Event) -> None:
        """One MQTT connection after another, with backoff in between, until stop is set."""
        backoff = Backoff(first_s=RECONNECT_FIRST_S, max_s=RECONNECT_MAX_S)
        broker = str(self.config)  # mqtts://bridge@host:port: never the password
        while not stop.is_set():
            client = self._new_client()
            connected = False
            try:
                async with client:
                    connected = self.mqtt_connected = True
                    self.mqtt_connects += 1
                    backoff.reset()
                    granted = await client.subscribe([(topic, 1) for topic in self.subscriptions])
                    for topic, code in zip(self.subscriptions, granted, strict=False):
                        if code == 0x80 or getattr(code, "is_failure", False):
                            # Mosquitto answers a subscription its ACL denies with 0x80: say so, go on.
                            logger.error("the MQTT broker %s refused our subscription to %s (ACL?)", broker, topic)
                    logger.info(
                        "connected to MQTT broker %s as %s (persistent session); forwarding %s to Kafka topic %s%s",
                        broker,
                        self.client_id,
                        self.subscription,
                        self.kafka_topic,
                        f", {command_results_subscription()} to {self.results_topic}" if self.results_topic else "",
                    )
                    if self.site_status_topic is not None:
                        logger.info(
                            "forwarding %s to Kafka topic %s", site_status_subscription(), self.site_status_topic
                        )
                    await self._take_messages(client, stop)
            except aiomqtt.MqttError as exc:
                self.mqtt_connected = False
                delay_s = backoff.peek_s()
                if connected:
                    logger.warning("lost the MQTT broker %s (%s); reconnecting in %.1f s", broker, exc, delay_s)
                else:
                    logger.warning("MQTT broker %s unavailable (%s); retrying in %.1f s", broker, exc, delay_s)
                if await backoff.wait(stop):
                    break
        self.mqtt_connected = False
        logger.info("stopped taking MQTT messages")

    def _new_client(self) -> aiomqtt.Client:
        # Acknowledged by `_persist_and_ack` once the batch is in the outbox, not on arrival.
        return aiomqtt_client(self.config, self.client_id, persistent=True, manual_ack=True)

    async def _take_messages(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Persist and acknowledge messages in batches until stop is set or the connection drops."""
        taking = asyncio.create_task(self._take_batches(client))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not taking.done():
                # Cancellation lands only at the wait for the next message, never between a
                # batch's persist and its acks (they run in one go, without an await).
                taking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await taking
        if not taking.cancelled():
            taking.result()  # the connection dropped: raises aiomqtt.MqttError

    async def _take_batches(self, client: aiomqtt.Client) -> None:
        queue = client._queue  # what arrived meanwhile is taken as one batch (aiomqtt has no public way)
        async for message in client.messages:
            # paho reads one packet per turn of the event loop: let it read what the broker has
            # already sent (up to its in-flight window) before storing, or every message would
            # cost a transaction of its own. At a low rate the first turn brings nothing: no delay.
            for _ in range(GATHER_TURNS_AT_MOST):
                queued = queue.qsize()
                await asyncio.sleep(0)
                if queue.qsize() == queued:
                    break
            batch = [message]
            while len(batch) < BATCH_AT_MOST and not queue.empty():
                batch.append(queue.get_nowait())
            self._persist_and_ack(client, batch)

    def _persist_and_ack(self, client: aiomqtt.Client, batch: list[aiomqtt.Message]) -> None:
        """Outbox first, PUBACK after: a crash in between makes the broker send them again, never lose them."""
        results = statuses = 0
        for message in batch:
            topic = message.topic.value
            try:
                kafka_topic, key = self._route(topic)
            except ValueError as exc:
                self._note_malformed(topic, exc)
                continue
            results += kafka_topic == self.results_topic
            statuses += kafka_topic == self.site_status_topic
            self.publisher.publish_encoded(kafka_topic, key.encode(), bytes(message.payload))
        self.publisher.persist()
        paho = client._client
        for message in batch:
            if message.qos > 0:  # a QoS 0 publish gets no acknowledgement (and no redelivery)
                paho.ack(message.mid, message.qos)
        self.received += len(batch)
        self.results_received += results
        self.site_statuses_received += statuses
        for observer in self.batch_observers:
            try:
                observer(batch, time.time())
            except Exception:  # an observer's defect is never the batch's problem
                logger.exception("a batch observer failed; the batch itself was persisted")

    def _route(self, topic: str) -> tuple[str, str]:
        """(Kafka topic, key) of an MQTT topic: the key is the charge point, or the site of a site
        status; ValueError when it names neither."""
        if self.site_status_topic is not None and topic.endswith("/site-status"):
            return self.site_status_topic, parse_site_status_topic(topic)
        if self.results_topic is not None and topic.endswith("/command-results"):
            _site, charge_point = parse_charge_point_topic(topic, "command-results")
            return self.results_topic, charge_point
        _site, charge_point = parse_telemetry_topic(topic)
        return self.kafka_topic, charge_point

    def _note_malformed(self, topic: str, error: ValueError) -> None:
        """Count it and let it go (acknowledged: it can never be routed); log at most once a minute."""
        self.malformed += 1
        now = time.monotonic()
        if self._malformed_logged_at is None or now - self._malformed_logged_at >= MALFORMED_LOG_INTERVAL_S:
            self._malformed_logged_at = now
            logger.warning(
                "dropped a message on %r, it cannot be routed (%s); %d such messages so far",
                topic,
                error,
                self.malformed,
            )

    async def _watch_until_stopped(self, stop: asyncio.Event) -> None:
        """The stats line every stats_interval_s; the replay watch in between."""
        next_stats_s = time.monotonic() + self.stats_interval_s
        watch_every_s = WATCH_EVERY_S
        while not await wait_unless_stopped(stop, min(watch_every_s, max(0.0, next_stats_s - time.monotonic()))):
            now_s = time.monotonic()
            stats = self.stats
            self.replay_watch.observe(now_s, stats.forwarded, stats.buffered, stats.oldest_buffered_age_s)
            watch_every_s = WATCH_BACKLOG_EVERY_S if self.replay_watch.in_backlog else WATCH_EVERY_S
            if now_s >= next_stats_s:
                logger.info("%s", stats.log_line())
                next_stats_s = now_s + self.stats_interval_s


def build_bridge(command_bridge: CommandBridge | None = None) -> Bridge:
    """The bridge as the settings describe it; its outbox is named after its MQTT client id."""
    client_id = setting("BRIDGE_CLIENT_ID")
    topic = telemetry_topic()
    outbox = Outbox(outbox_path(f"bridge-{client_id}"))
    return Bridge(
        OutboxPublisher(outbox, KafkaTransport(topic)),
        kafka_topic=topic,
        config=mqtt_config(),
        client_id=client_id,
        subscription=telemetry_subscription(),
        stats_interval_s=setting("BRIDGE_STATS_INTERVAL_S"),
        results_topic=command_results_topic(),
        command_bridge=command_bridge,
        site_status_topic=site_status_topic(),
    )


async def run_bridge(stop: asyncio.Event, *, metrics_port: int | None = None) -> None:
    """Forward MQTT telemetry and command results to Kafka, and Kafka commands to MQTT, until stop
    is set (manage.py runbridge).

    A failure other than a broker outage (which both halves ride out) is logged here and raised,
    after the other half stopped as on SIGTERM: runbridge exits non-zero, and what was not
    acknowledged stays with the MQTT broker (results) or uncommitted in Kafka (commands).
    """
    from gateway.observe import Observed, observing
    from gateway.services import prepare_topics  # services imports the poller; only runbridge needs this

    await prepare_topics()  # the command topics too
    commands = build_command_bridge()
    bridge = build_bridge(commands)
    halt = asyncio.Event()  # stop, or the other half failed

    async def run_half(half: Bridge | CommandBridge, what: str) -> None:
        try:
            await half.run(halt)
        except Exception:
            logger.critical("the bridge failed; %s", what, exc_info=True)
            raise
        finally:
            halt.set()

    relay = asyncio.create_task(_relay_stop(stop, halt))
    observed = Observed("bridge", bridge.client_id, {"bridge": bridge, "commands": commands}, metrics_port)
    try:
        async with observing(observed, halt):
            results = await asyncio.gather(
                run_half(bridge, "MQTT telemetry, command results and site statuses no longer reach Kafka"),
                run_half(commands, "commands no longer reach MQTT"),
                return_exceptions=True,
            )
    finally:
        relay.cancel()
        bridge.log_stopped()
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _relay_stop(stop: asyncio.Event, halt: asyncio.Event) -> None:
    """SIGTERM or SIGINT stops both halves."""
    await stop.wait()
    halt.set()
