"""The long-running services behind the management commands: poller and consumer."""

import asyncio
import logging

from aiokafka.errors import KafkaError

from gateway.conf import setting
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.topics import dead_letter_topic, ensure_topics, telemetry_topic
from gateway.modbus.poller import Poller
from gateway.publish.outputs import build_publisher, default_poller_id
from gateway.publish.publisher import OutboxPublisher, PublishStats
from gateway.runtime import wait_unless_stopped
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

# runpoller and runconsumer exit within this many seconds of SIGTERM or SIGINT (README, "Stopping").
STOP_WITHIN_S = 15.0
# How long runpoller keeps trying to deliver its outbox when it stops (the rest waits for the next start).
POLLER_FLUSH_TIMEOUT_S = 10.0


async def prepare_topics() -> None:
    """Create the topics if the broker lets us; an unreachable broker is retried by the clients."""
    try:
        await ensure_topics([telemetry_topic(), dead_letter_topic()])
    except (KafkaError, OSError) as exc:
        logger.warning("could not check Kafka topics (%s); continuing", exc)


async def run_poller(
    stop: asyncio.Event, *, site: str | None = None, output: str | None = None, poller_id: str | None = None
) -> None:
    """Poll every enabled charge point and publish through the outbox until stop is set, then flush.

    After SIGTERM/SIGINT the poll in progress finishes (at most EVDASH_MODBUS_TIMEOUT_S + 1 s),
    then the outbox is flushed (at most POLLER_FLUSH_TIMEOUT_S): runpoller exits within
    STOP_WITHIN_S with the defaults. What is not delivered by then stays in the outbox file and
    goes out after the next start.
    """
    output = output or setting("POLLER_OUTPUT")
    if output == "kafka":
        await prepare_topics()
    publisher = build_publisher(output, poller_id=poller_id or default_poller_id(site))
    await publisher.start()
    reporter = asyncio.create_task(report_outbox(publisher, stop), name="outbox-stats")
    try:
        await Poller(publisher.publish, site=site).run(stop)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await publisher.close(flush_timeout_s=POLLER_FLUSH_TIMEOUT_S)
        stats = publisher.stats
        # The shutdown test compares these with what reached Kafka: keep the wording. "unsent":
        # still in the outbox, sent after the next start.
        logger.info(
            "poller stopped: %d records published, %d records sent, %d dropped, %d unsent",
            stats.published,
            stats.delivered,
            stats.dropped,
            stats.buffered,
        )


def outbox_line(stats: PublishStats) -> str:
    """The outbox part of the poller's stats: is the transport keeping up, is anything lost?"""
    age_s = stats.oldest_age_s
    return (
        f"poller outbox: buffered={stats.buffered} "
        f"oldest_buffered_age_s={0.0 if age_s is None else age_s:.1f} "
        f"delivered={stats.delivered} dropped={stats.dropped} failed_sends={stats.failed_sends}"
    )


async def report_outbox(publisher: OutboxPublisher, stop: asyncio.Event) -> None:
    """Log the outbox line every POLLER_STATS_INTERVAL_S, next to the "poller stats:" line."""
    interval_s = setting("POLLER_STATS_INTERVAL_S")
    while not await wait_unless_stopped(stop, interval_s):
        logger.info("%s", outbox_line(publisher.stats))


async def poll_once(
    *, site: str | None = None, output: str | None = None, poller_id: str | None = None
) -> list[Record]:
    """Poll every enabled charge point once, publish, flush (runpoller --once).

    Its outbox is its own ("<poller id>-once"), so that it can run beside the long-running poller.
    """
    output = output or setting("POLLER_OUTPUT")
    if output == "kafka":
        await prepare_topics()
    publisher = build_publisher(output, poller_id=f"{poller_id or default_poller_id(site)}-once")
    await publisher.start()
    try:
        return await Poller(publisher.publish, site=site).poll_all_once()
    finally:
        await publisher.close(flush_timeout_s=POLLER_FLUSH_TIMEOUT_S)


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
