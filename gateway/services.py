"""The long-running services behind the management commands: poller and consumer."""

import asyncio
import logging

from aiokafka.errors import KafkaError

from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.producer import TelemetryPublisher
from gateway.kafka.topics import dead_letter_topic, ensure_topics, telemetry_topic
from gateway.modbus.poller import Poller
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

# runpoller and runconsumer exit within this many seconds of SIGTERM or SIGINT (README, "Stopping").
STOP_WITHIN_S = 15.0
# How long runpoller keeps trying to hand buffered records to Kafka when it stops.
POLLER_FLUSH_TIMEOUT_S = 10.0


async def prepare_topics() -> None:
    """Create the topics if the broker lets us; an unreachable broker is retried by the clients."""
    try:
        await ensure_topics([telemetry_topic(), dead_letter_topic()])
    except (KafkaError, OSError) as exc:
        logger.warning("could not check Kafka topics (%s); continuing", exc)


async def run_poller(stop: asyncio.Event, *, site: str | None = None) -> None:
    """Poll every enabled charge point and publish to Kafka until stop is set, then flush.

    After SIGTERM/SIGINT the poll in progress finishes (at most EVDASH_MODBUS_TIMEOUT_S + 1 s),
    then buffered records are flushed (at most POLLER_FLUSH_TIMEOUT_S): runpoller exits within
    STOP_WITHIN_S with the defaults.
    """
    await prepare_topics()
    publisher = TelemetryPublisher(telemetry_topic())
    published = 0

    def publish(record: Record) -> None:
        nonlocal published
        published += 1
        publisher.publish(record)

    await publisher.start()
    try:
        await Poller(publish, site=site).run(stop)
    finally:
        await publisher.stop(flush_timeout_s=POLLER_FLUSH_TIMEOUT_S)
        # The shutdown test compares these with what reached Kafka: keep the wording.
        logger.info(
            "poller stopped: %d records published, %d records sent, %d dropped, %d unsent",
            published,
            publisher.sent,
            publisher.dropped,
            len(publisher.buffer),
        )


async def poll_once(*, site: str | None = None) -> list[Record]:
    """Poll every enabled charge point once, publish, flush (runpoller --once)."""
    await prepare_topics()
    publisher = TelemetryPublisher(telemetry_topic())
    await publisher.start()
    try:
        return await Poller(publisher.publish, site=site).poll_all_once()
    finally:
        await publisher.stop()


async def run_consumer(stop: asyncio.Event, consumer: TelemetryConsumer | None = None) -> None:
    """Consume telemetry into storage and the live dashboard until stop is set.

    A failure of the consumer (anything but a broker outage, which it rides out) is logged here
    and raised: runconsumer exits non-zero and the demo stops, so it is never silent.
    """
    consumer = consumer or TelemetryConsumer(telemetry_topic())
    try:
        await prepare_topics()
        await consumer.run(stop)
    except Exception:
        logger.critical("the telemetry consumer failed; the dashboards get no more data", exc_info=True)
        raise
    finally:
        logger.info(
            "consumer stopped: %d records handled, %d malformed and %d failed records dead-lettered",
            consumer.handled,
            consumer.skipped,
            consumer.failed,
        )
