"""Metrics of runpoller: polls, failures by reason, poll duration and lateness, records published,
charge points (connected), heartbeats, commands by result, and its outbox.

Read at scrape time from what the poller keeps anyway (modbus.poller.PollStats, Poller.tasks and
.pollers, CommandRunner.results, the command source's counts): a poll pays integer increments only.
Per charge point series (connected, consecutive failures, last poll duration) only with
EVDASH_METRICS_CHARGE_POINT_LABELS: 5,000 charge points would be 15,000 series.
"""

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric

from gateway.commands.runner import CommandRunner
from gateway.conf import setting
from gateway.metrics.families import copy_of, counter, gauge, histogram, labelled_counter, labelled_gauge
from gateway.metrics.outbox import outbox_metrics
from gateway.modbus.poller import Poller
from gateway.publish.publisher import OutboxPublisher


class PollerCollector:
    """A prometheus_client collector over one runpoller's parts (Observed.parts of kind "poller")."""

    def __init__(
        self,
        poller: Poller,
        publisher: OutboxPublisher | None = None,
        runner: CommandRunner | None = None,
        source: Any = None,
        *,
        charge_point_labels: bool | None = None,
    ) -> None:
        self.poller = poller
        self.publisher = publisher
        self.runner = runner
        self.source = source  # a Kafka or MQTT command source: .received, .malformed.count
        self.charge_point_labels = (
            setting("METRICS_CHARGE_POINT_LABELS") if charge_point_labels is None else charge_point_labels
        )

    def collect(self) -> Iterator[Metric]:
        poller = self.poller
        stats = poller.stats
        yield counter("evdash_polls_total", "Polls of charge points (each publishes one record).", stats.polls)
        yield labelled_counter(
            "evdash_poll_failures_total",
            "Polls that lost data, by reason (a poll counts once per reason): connection, timeout, "
            "device_exception (an exception response to a block), decode (a value or answer not decoded).",
            ["reason"],
            (([reason], count) for reason, count in copy_of(stats.failures).items()),
        )
        yield histogram(
            "evdash_poll_duration_seconds",
            "How long a poll took: connect if needed, the reads, the heartbeats due.",
            [((), stats.poll_duration)],
        )
        yield histogram(
            "evdash_poll_lateness_seconds", "How late a poll started against its schedule.", [((), stats.lateness)]
        )
        yield counter(
            "evdash_records_published_total", "Telemetry records the charge points' loops published.", stats.published
        )
        yield counter(
            "evdash_heartbeat_writes_total", "Heartbeat (watchdog) writes that got through.", stats.heartbeats
        )
        pollers = list(copy_of(poller.pollers).items())
        yield gauge("evdash_charge_points", "Charge points this poller polls.", len(poller.tasks))
        yield gauge(
            "evdash_charge_points_connected",
            "Charge points with an open Modbus connection.",
            sum(1 for _slug, cp in pollers if cp.connection.connected),
        )
        yield gauge(
            "evdash_charge_points_unloadable",
            "Enabled charge points not polled because their profile cannot be loaded.",
            len(poller.unloadable),
        )
        yield counter("evdash_poller_reloads_total", "Reads of the charge points from the database.", poller.reloads)
        if self.charge_point_labels:
            yield from self._per_charge_point(pollers)
        if self.runner is not None:
            yield from self._commands(self.runner)
        if self.publisher is not None:
            yield from outbox_metrics(self.publisher)

    def _commands(self, runner: CommandRunner) -> Iterator[Metric]:
        yield labelled_counter(
            "evdash_commands_total",
            "Command results journaled by this poller, by result (applied, failed) and failure reason.",
            ["result", "reason"],
            (([status, reason], count) for (status, reason), count in copy_of(runner.results).items()),
        )
        yield counter("evdash_commands_delivered_total", "Commands taken from the command source.", runner.delivered)
        yield counter(
            "evdash_commands_republished_total",
            "Stored results published again for a redelivered command.",
            runner.republished,
        )
        if self.source is not None:
            yield counter(
                "evdash_commands_received_total", "Messages the command source received.", self.source.received
            )
            yield counter(
                "evdash_commands_malformed_total",
                "Messages the command source skipped as malformed.",
                self.source.malformed.count,
            )

    def _per_charge_point(self, pollers: list) -> Iterator[Metric]:
        labels = ["site", "charge_point"]
        yield labelled_gauge(
            "evdash_charge_point_connected",
            "1 while the charge point's Modbus connection is open.",
            labels,
            (([cp.config.site, slug], int(cp.connection.connected)) for slug, cp in pollers),
        )
        yield labelled_gauge(
            "evdash_charge_point_consecutive_failures",
            "Polls in a row that could not reach the charge point.",
            labels,
            (([cp.config.site, slug], cp.failures) for slug, cp in pollers),
        )
        yield labelled_gauge(
            "evdash_charge_point_last_poll_duration_seconds",
            "How long the charge point's last poll took.",
            labels,
            (([cp.config.site, slug], cp.last_poll_s) for slug, cp in pollers),
        )
