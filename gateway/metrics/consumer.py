"""Metrics of runconsumer, by sink group ("live", "history"; "results" for command results,
"site_status" for the site controllers' statuses):
records handled, lag per partition, batch duration, dead letters, and the alert evaluations.

Batch durations come from TelemetryConsumer.batch_observers (a BucketCounts each: one bisect per
batch); everything else is read at scrape time from the consumers' own counters.
"""

from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord
from prometheus_client.core import Metric

from gateway.alerts.engine import AlertEngine
from gateway.kafka.consumer import TelemetryConsumer
from gateway.metrics.families import copy_of, counter, histogram, labelled_counter, labelled_gauge
from gateway.metrics.histogram import BucketCounts
from gateway.sinks import SinkGroup

RESULTS = "results"  # the group label of the command results' consumer
SITE_STATUS = "site_status"  # the group label of the site-status consumer (gateway/sitecontrol/consume.py)


class BatchDurations:
    """A batch observer (TelemetryConsumer.batch_observers): how long the sinks took per batch."""

    def __init__(self) -> None:
        self.counts = BucketCounts()

    def __call__(self, _messages: Sequence[ConsumerRecord], _records: list[Any], duration_s: float) -> None:
        self.counts.observe(duration_s)


class ConsumerCollector:
    """A prometheus_client collector over one runconsumer's consumers (Observed.parts of kind "consumer").

    Attaches a BatchDurations observer to each consumer it is given: build it before they run.
    """

    def __init__(
        self,
        groups: Sequence[SinkGroup] = (),
        results: TelemetryConsumer | None = None,
        alerts: AlertEngine | None = None,
        *,
        site_status: TelemetryConsumer | None = None,
    ) -> None:
        self.consumers: list[tuple[str, TelemetryConsumer, BatchDurations]] = []
        named = [(group.name, group.consumer) for group in groups]
        if results is not None:
            named.append((RESULTS, results))
        if site_status is not None:
            named.append((SITE_STATUS, site_status))
        for name, consumer in named:
            durations = BatchDurations()
            consumer.batch_observers.append(durations)
            self.consumers.append((name, consumer, durations))
        self.alerts = alerts

    def collect(self) -> Iterator[Metric]:
        consumers = self.consumers
        group = ["group"]
        yield labelled_counter(
            "evdash_consumer_records_total",
            "Records every sink of the group accepted.",
            group,
            (([name], consumer.handled) for name, consumer, _d in consumers),
        )
        yield labelled_gauge(
            "evdash_consumer_lag_messages",
            "Messages behind the broker's high watermark, per assigned partition, after the last fetch.",
            ["group", "partition"],
            (
                ([name, str(partition)], lag)
                for name, consumer, _d in consumers
                for partition, lag in sorted(copy_of(consumer.lag_by_partition).items())
            ),
        )
        yield histogram(
            "evdash_consumer_batch_duration_seconds",
            "How long the group's sinks took to handle a batch.",
            (([name], durations.counts) for name, _c, durations in consumers),
            group,
        )
        yield labelled_counter(
            "evdash_consumer_dead_lettered_total",
            "Messages copied to the dead-letter topic (not decodable, or a sink kept refusing them).",
            group,
            (([name], consumer.dead_lettered) for name, consumer, _d in consumers),
        )
        yield labelled_counter(
            "evdash_consumer_malformed_total",
            "Messages that could not be decoded (dead-lettered at once).",
            group,
            (([name], consumer.skipped) for name, consumer, _d in consumers),
        )
        yield labelled_gauge(
            "evdash_consumer_caught_up",
            "1 when the last fetch found the group's partitions drained.",
            group,
            (([name], int(consumer.caught_up)) for name, consumer, _d in consumers),
        )
        if self.alerts is not None:
            yield counter(
                "evdash_alert_evaluations_total",
                "Telemetry records judged against the alert rules (redelivered ones skipped).",
                self.alerts.evaluations,
            )
