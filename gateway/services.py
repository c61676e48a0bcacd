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


async def prepare_topics() -> None:
    """Create the topics if the broker lets us; an unreachable broker is retried by the clients."""
    try:
        await ensure_topics([telemetry_topic(), dead_letter_topic()])
    except (KafkaError, OSError) as exc:
        logger.warning("could not check Kafka topics (%s); continuing", exc)


async def run_poller(stop: asyncio.Event, *, site: str | None = None) -> None:
    """Poll every enabled charge point and publish to Kafka until stop is set, then flush."""
    await prepare_topics()
    publisher = TelemetryPublisher(telemetry_topic())
    await publisher.start()
    try:
        await Poller(publisher.publish, site=site).run(stop)
    finally:
        await publisher.stop()
        logger.info("poller stopped: %d records sent, %d dropped", publisher.sent, publisher.dropped)


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
