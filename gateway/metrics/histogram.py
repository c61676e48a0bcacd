"""Histograms whose hot path is an integer increment: fixed buckets counted by the part that
observes, exposed as a Prometheus histogram only when /metrics is scraped.

prometheus_client's Histogram.observe takes a lock and updates a mutex-guarded value per call; at
thousands of polls a second that is CPU the poller spends on its own metrics. BucketCounts costs
one bisect and two additions, and imports nothing of prometheus_client: the parts that keep one
(the poller, the consumer's batch observer) stay free of it (gateway/metrics/families.py exposes it).

Thread safety: observe() runs on the event loop's thread, snapshot() on the metrics server's.
Under the GIL a list copy is atomic, so a snapshot's buckets and count always agree; its sum may
miss the observation in progress, which Prometheus tolerates (it is off by one observation at most).
"""

from bisect import bisect_left
from collections.abc import Sequence

# One set of bucket bounds for every duration we expose (seconds): a Modbus read of a few
# milliseconds up to a connect that times out, a consumer batch, a late poll.
SECONDS_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BucketCounts:
    """Counts of observations per bucket (upper bounds inclusive, as Prometheus's `le`) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = SECONDS_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"bucket bounds must increase: {bounds}")
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (the hot path: no lock, no allocation)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """(counts per bucket, not cumulative; sum), safe to call from another thread."""
        return list(self.counts), self.sum

    @property
    def count(self) -> int:
        return sum(self.counts)
