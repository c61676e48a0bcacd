"""The long-running services behind the management commands: poller (with its commands) and consumer."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from gateway import sinks
from gateway.alerts.engine import AlertEngine
from gateway.commands.intake import KafkaCommandSource, MqttCommandSource, build_command_source
from gateway.commands.journal import CommandJournal, journal_path
from gateway.commands.messages import CommandMessage
from gateway.commands.results import build_results_consumer, consume_results, sweep_unanswered
from gateway.commands.runner import CommandRunner
from gateway.conf import setting
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.topics import (
    alerts_topic,
    command_results_topic,
    commands_topic,
    dead_letter_topic,
    ensure_topics,
    site_status_topic,
    telemetry_topic,
)
from gateway.modbus.poller import Poller
from gateway.observe import Observed, observing
from gateway.publish.outputs import build_publisher, command_result_topic, default_poller_id, site_status_topic_for
from gateway.publish.publisher import OutboxPublisher, PublishStats
from gateway.runtime import Backoff, wait_unless_stopped
from gateway.sitecontrol.consume import build_site_status_consumer, site_status_jobs
from gateway.sitecontrol.control import SiteControl
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

# runpoller and runconsumer exit within this many seconds of SIGTERM or SIGINT (README, "Stopping").
STOP_WITHIN_S = 15.0
# How long runpoller keeps trying to deliver its outbox when it stops (the rest waits for the next start).
POLLER_FLUSH_TIMEOUT_S = 10.0
# The command intake's own stop (an MQTT disconnect waits at most 5 s, a Kafka commit 2 s) runs
# while the charge points' loops finish; it is cancelled after this.
INTAKE_STOP_TIMEOUT_S = 6.0
# What the dashboards lose when a sink group's consumer fails (said in the log as it stops everything).
GROUP_FAILURE_COSTS = {
    sinks.LIVE: "the dashboards get no more data and no alerts are evaluated",
    sinks.HISTORY: "no more history or sessions are stored",
}
LOAD_CHECK_S = 0.05  # how often take_commands looks whether the poller loaded its charge points


async def prepare_topics() -> None:
    """Create the topics if the broker lets us; an unreachable broker is retried by the clients."""
    try:
        await ensure_topics(
            [
                telemetry_topic(),
                dead_letter_topic(),
                commands_topic(),
                command_results_topic(),
                alerts_topic(),
                site_status_topic(),
            ]
        )
    except (KafkaError, OSError) as exc:
        logger.warning("could not check Kafka topics (%s); continuing", exc)


async def run_poller(
    stop: asyncio.Event,
    *,
    site: str | None = None,
    output: str | None = None,
    poller_id: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Poll every enabled charge point, publish through the outbox and carry out operator commands
    until stop is set, then flush.

    Commands come the way telemetry goes (Kafka, or the edge broker with --output mqtt; see
    gateway.commands.intake), are checked against this poller's command journal
    (OUTBOX_DIR/commands-<id>.sqlite3) and queued on their charge point; results go out through
    the outbox. After SIGTERM/SIGINT the poll in progress finishes (at most EVDASH_MODBUS_TIMEOUT_S
    + 1 s), then the outbox is flushed (at most POLLER_FLUSH_TIMEOUT_S): runpoller exits within
    STOP_WITHIN_S with the defaults. What is not delivered by then stays in the outbox file and
    goes out after the next start.
    """
    output = output or setting("POLLER_OUTPUT")
    poller_id = poller_id or default_poller_id(site)
    if output == "kafka":
        await prepare_topics()
    publisher = build_publisher(output, poller_id=poller_id)
    try:
        journal = CommandJournal(journal_path(poller_id))
        try:
            source = build_command_source(output, site=site, poller_id=poller_id)
        except BaseException:
            journal.close()
            raise
    except BaseException:
        await publisher.close(flush_timeout_s=0)
        raise
    await publisher.start()
    poller = Poller(publisher.publish, site=site, poller_id=poller_id)
    runner = CommandRunner(poller, publisher, journal, poller_id=poller_id, result_topic=command_result_topic(output))
    poller.hooks = runner  # each needs the other: tied once both exist, before the poller starts its loops
    status_topic = site_status_topic_for(output)
    site_control = SiteControl(
        poller_id=poller_id,
        deliver=runner.deliver,
        publish_status=lambda status: publisher.publish_encoded(
            status_topic(status.site), status.key, status.to_json()
        ),
        polled=lambda: set(poller.tasks),
        site=site,
    )
    poller.publish = site_control.tap(poller.publish)  # every record also reaches its site's controller
    runner.result_listeners.append(site_control.on_result)
    reporter = asyncio.create_task(report_outbox(publisher, stop), name="outbox-stats")
    intake = asyncio.create_task(take_commands(source, poller, runner, stop), name="command-intake")
    control = asyncio.create_task(site_control.run(stop), name="site-control")
    observed = Observed(
        "poller",
        poller_id,
        {"poller": poller, "publisher": publisher, "runner": runner, "source": source, "site_control": site_control},
        metrics_port=metrics_port,
    )
    try:
        async with observing(observed, stop):
            await poller.run(stop)
    finally:
        if not stop.is_set():  # the poller failed: the intake would wait for a stop that never comes
            intake.cancel()
            control.cancel()
        await stop_within(control, INTAKE_STOP_TIMEOUT_S)
        await stop_within(intake, INTAKE_STOP_TIMEOUT_S)
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await publisher.close(flush_timeout_s=POLLER_FLUSH_TIMEOUT_S)
        journal.close()
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
        logger.info(
            "commands: %d received, %d malformed skipped, %d taken, %d results published again",
            source.received,
            source.malformed.count,
            runner.delivered,
            runner.republished,
        )


async def take_commands(
    source: KafkaCommandSource | MqttCommandSource, poller: Poller, runner: CommandRunner, stop: asyncio.Event
) -> None:
    """Run the command source until stop is set; restarted (with backoff) if it fails.

    The source starts at once, so a new Kafka group's "latest" is taken early; what it delivers
    before the poller first loaded its charge points waits for that load (until then the poller
    would disown every command).
    """
    loaded = False
    waiting: list[CommandMessage] = []

    def deliver(command: CommandMessage) -> None:
        if loaded:
            runner.deliver(command)
        else:
            waiting.append(command)

    async def release_when_loaded() -> None:
        nonlocal loaded
        while not poller.reloads:
            if await wait_unless_stopped(stop, LOAD_CHECK_S):
                return
        loaded = True
        for command in waiting:
            try:
                runner.deliver(command)
            except Exception:
                logger.exception("could not take command %s for %s", command.id, command.charge_point)
        waiting.clear()

    releaser = asyncio.create_task(release_when_loaded(), name="commands-after-load")
    restart = Backoff(first_s=1.0, max_s=30.0)
    try:
        while not stop.is_set():
            try:
                await source.run(stop, deliver)
            except Exception:
                # A defect, not a broker outage (the sources ride those out): said loudly, restarted.
                logger.exception("the command intake failed; restarting it in %.1f s", restart.peek_s())
                await restart.wait(stop)
    finally:
        releaser.cancel()
        await asyncio.gather(releaser, return_exceptions=True)


async def stop_within(task: asyncio.Task, timeout_s: float) -> None:
    """Wait for a task that is stopping; cancel it after timeout_s. Its failure is logged, not raised."""
    await asyncio.wait({task}, timeout=timeout_s)
    if not task.done():
        logger.warning("%s did not stop within %.0f s; cancelled", task.get_name(), timeout_s)
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", task.get_name(), exc_info=task.exception())


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
    stop: asyncio.Event,
    consumer: TelemetryConsumer | None = None,
    results: TelemetryConsumer | None = None,
    *,
    groups: tuple[str, ...] = sinks.GROUPS,
    history: TelemetryConsumer | None = None,
    metrics_port: int | None = None,
) -> None:
    """Consume telemetry into its sink groups (gateway/sinks.py: live state, alerts and the push;
    history and sessions) and command results onto their audit rows, until stop is set; meanwhile
    fail the commands nobody answered.

    `consumer` and `history` replace the groups' own consumers (tests, scale-out); `groups`
    chooses which sink groups this process runs (runconsumer --only). Everything runs as tasks
    that stop together. A failure of one (anything but a broker outage, which the consumers ride
    out) is logged and raised after the others stopped: runconsumer exits non-zero and the demo
    stops, so it is never silent.
    """
    alerts = AlertEngine()
    built: list[sinks.SinkGroup] = []
    for name in groups:
        if name == sinks.LIVE:
            group = sinks.live_group(alerts=alerts)
            if consumer is not None:
                group.consumer = consumer
                alerts.pipeline_caught_up = lambda: consumer.caught_up
        else:
            group = sinks.history_group() if history is None else sinks.SinkGroup(sinks.HISTORY, history)
        built.append(group)
    results = results or build_results_consumer(alerts=alerts if sinks.LIVE in groups else None)

    def consume(group: sinks.SinkGroup) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def run(together: asyncio.Event) -> None:
            await prepare_topics()
            await group.consumer.run(together)

        return run

    jobs: dict[str, tuple[Callable[[asyncio.Event], Awaitable[None]], str]] = {}
    for group in built:
        jobs[f"the {group.name} telemetry consumer"] = (consume(group), GROUP_FAILURE_COSTS[group.name])
        jobs.update(group.jobs)
    jobs["the command results consumer"] = (
        lambda together: consume_results(together, results),
        "command results are no longer stored",
    )
    jobs["the command sweeper"] = (sweep_unanswered, "unanswered commands stay pending")
    site_statuses = build_site_status_consumer(alerts=alerts if sinks.LIVE in groups else None)
    jobs.update(site_status_jobs(consumer=site_statuses))  # samples, site alerts, the site page
    observed = Observed(
        "consumer",
        "+".join(group.consumer.group_id for group in built) or setting("CONSUMER_GROUP"),
        {
            "groups": built,
            "results": results,
            "site_status": site_statuses,
            "alerts": alerts if sinks.LIVE in groups else None,
        },
        metrics_port=metrics_port,
    )
    try:
        async with observing(observed, stop):
            await run_together(stop, jobs)
    finally:
        for group in built:
            consumer_stats = group.consumer
            logger.info(
                "%s consumer stopped: %d records handled, %d malformed and %d failed records dead-lettered",
                group.name,
                consumer_stats.handled,
                consumer_stats.skipped,
                consumer_stats.failed,
            )
        logger.info(
            "command results consumer stopped: %d handled, %d malformed and %d failed dead-lettered",
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
