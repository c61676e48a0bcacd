"""Building metric families at scrape time from the counters the parts keep (no state of their own)."""

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from gateway.metrics.histogram import BucketCounts

K = TypeVar("K")
V = TypeVar("V")
COPY_ATTEMPTS = 5


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter without labels (`name` ends in _total)."""
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge without labels."""
    return GaugeMetricFamily(name, documentation, value=value)


def labelled_counter(
    name: str, documentation: str, labels: Sequence[str], values: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily:
    return _labelled(CounterMetricFamily(name, documentation, labels=list(labels)), values)


def labelled_gauge(
    name: str, documentation: str, labels: Sequence[str], values: Iterable[tuple[Sequence[str], float]]
) -> GaugeMetricFamily:
    return _labelled(GaugeMetricFamily(name, documentation, labels=list(labels)), values)


Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)


def _labelled(family: Family, values: Iterable[tuple[Sequence[str], float]]) -> Family:
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def histogram(
    name: str,
    documentation: str,
    series: Iterable[tuple[Sequence[str], BucketCounts]],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    """A histogram of one or more BucketCounts ((label values, counts) each), read now."""
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for label_values, bucket_counts in series:
        counts, total = bucket_counts.snapshot()
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*bucket_counts.bounds, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append((_bound_text(bound), cumulative))
        family.add_metric(list(label_values), buckets, total)
    return family


def _bound_text(bound: float) -> str:
    """A bucket's `le` as Prometheus writes it: "0.005", "1.0", "+Inf"."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


def copy_of(mapping: Mapping[K, V]) -> dict[K, V]:
    """A copy of a dict the event loop's thread may be changing while a scrape reads it.

    Copying a dict of plain keys runs without releasing the GIL, so it sees one state of it; the
    retry is for an interpreter where that does not hold (a resize seen mid-copy raises).
    """
    for _attempt in range(COPY_ATTEMPTS - 1):
        try:
            return dict(mapping)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return dict(mapping)
