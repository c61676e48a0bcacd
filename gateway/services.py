"""The long-running services behind the management commands: poller and consumer."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from gateway.commands.results import build_results_consumer, consume_results, sweep_unanswered
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


async def run_consumer(
    stop: asyncio.Event, consumer: TelemetryConsumer | None = None, results: TelemetryConsumer | None = None
) -> None:
    """Consume telemetry into storage and the live dashboard, and command results onto their
    audit rows, until stop is set; meanwhile fail the commands nobody answered.

    The three run as tasks that stop together. A failure of one (anything but a broker outage,
    which the consumers ride out) is logged and raised after the others stopped: runconsumer exits
    non-zero and the demo stops, so it is never silent.
    """
    consumer = consumer or TelemetryConsumer(telemetry_topic())
    results = results or build_results_consumer()

    async def consume_telemetry(together: asyncio.Event) -> None:
        await prepare_topics()
        await consumer.run(together)

    try:
        await run_together(
            stop,
            {
                "the telemetry consumer": (consume_telemetry, "the dashboards get no more data"),
                "the command results consumer": (
                    lambda together: consume_results(together, results),
                    "command results are no longer stored",
                ),
                "the command sweeper": (sweep_unanswered, "unanswered commands stay pending"),
            },
        )
    finally:
        logger.info(
            "consumer stopped: %d records handled, %d malformed and %d failed records dead-lettered; "
            "%d command results handled, %d malformed and %d failed dead-lettered",
            consumer.handled,
            consumer.skipped,
            consumer.failed,
            results.handled,
            results.skipped,
            results.failed,
        )


async def run_together(
    stop: asyncio.Event, jobs: dict[str, tuple[Callable[[asyncio.Event], Awaitable[None]], str]]
) -> None:
    """Run jobs (name -> (job taking a stop event, what its failure costs)) until stop is set or one ends.

    Whichever comes first stops them all (each finishes its cycle); then the first failure, in
    the order of `jobs`, is logged with what it costs and raised.
    """
    together = asyncio.Event()
    tasks = {name: asyncio.create_task(job(together), name=name) for name, (job, _cost) in jobs.items()}
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*tasks.values(), stopped], return_when=asyncio.FIRST_COMPLETED)
        together.set()
        await asyncio.wait(tasks.values())
    finally:
        for task in [*tasks.values(), stopped]:
            task.cancel()
        await asyncio.gather(*tasks.values(), stopped, return_exceptions=True)
    failures = [(name, task.exception()) for name, task in tasks.items() if not task.cancelled() and task.exception()]
    for name, exc in failures:
        logger.critical("%s failed; %s", name, jobs[name][1], exc_info=exc)
    if failures:
        raise failures[0][1]
