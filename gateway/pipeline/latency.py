"""Per-hop latency from the timestamps the records carry, sampled per batch.

A hop's window keeps (when, milliseconds) samples of the last WINDOW_S seconds, at most
MAX_SAMPLES of them; p50/p95 are computed when the status row is written (every few seconds), not
when a sample is added. Observers take SAMPLES_PER_BATCH messages of each batch (first, middle,
last): a batch of 500 records costs three timestamp parses, never one per record.

Hops (gateway/pipeline/report.py puts them in the order data flows):
    poll       the record's own poll_ms (Modbus read and decode), read off the records at the consumer
    mqtt       bridge receipt (persisted in its outbox) - record ts: MQTT and bridge, edge path only
    to_kafka   Kafka message timestamp (CreateTime, set by the producer) - record ts: everything
               before Kafka; on the edge path the report subtracts the mqtt hop from it
    consumer   consumer done (the sinks took the batch, the live push included) - Kafka timestamp
    to_consumer  consumer done - record ts: the whole chain up to the push to the browsers
"""

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from gateway.telemetry import parse_ts

WINDOW_S = 60.0
MAX_SAMPLES = 4096  # per hop: at 3 samples a batch, a batch every 50 ms fills 60 s
SAMPLES_PER_BATCH = 3
# A sample beyond this is a clock step or a replayed backlog hours old: kept out of the window (a
# backlog is what outbox age and consumer lag show; the hop latency is about data in flow).
MAX_SAMPLE_MS = 6 * 3600 * 1000.0


class HopWindow:
    """Rolling samples of one hop. Added from the event loop (or, for the bridge, its thread);
    summarised from the reporter: a lock keeps the deque consistent for both."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.lock = threading.Lock()

    def add(self, value_ms: float, now_s: float | None = None) -> None:
        if not math.isfinite(value_ms) or abs(value_ms) > MAX_SAMPLE_MS:
            return
        with self.lock:
            self.samples.append((time.monotonic() if now_s is None else now_s, value_ms))

    def summary(self, now_s: float | None = None) -> dict[str, float | int] | None:
        """{"p50_ms", "p95_ms", "max_ms", "samples"} of the last window_s; None without samples."""
        now_s = time.monotonic() if now_s is None else now_s
        with self.lock:
            while self.samples and self.samples[0][0] < now_s - self.window_s:
                self.samples.popleft()
            values = sorted(value for _at, value in self.samples)
        if not values:
            return None
        return {
            "p50_ms": round(percentile(values, 50), 1),
            "p95_ms": round(percentile(values, 95), 1),
            "max_ms": round(values[-1], 1),
            "samples": len(values),
        }


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


class Latencies:
    """The hop windows of one process (or of one consumer group), by hop name."""

    def __init__(self) -> None:
        self.hops: dict[str, HopWindow] = {}

    def add(self, hop: str, value_ms: float, now_s: float | None = None) -> None:
        window = self.hops.get(hop)
        if window is None:
            window = self.hops[hop] = HopWindow()
        window.add(value_ms, now_s)

    def summary(self) -> dict[str, dict[str, float | int]]:
        now_s = time.monotonic()
        summaries = {hop: window.summary(now_s) for hop, window in self.hops.items()}
        return {hop: summary for hop, summary in summaries.items() if summary is not None}


def sample_indexes(count: int) -> list[int]:
    """At most SAMPLES_PER_BATCH positions of a batch of `count`: first, middle, last."""
    if count <= SAMPLES_PER_BATCH:
        return list(range(count))
    return [0, count // 2, count - 1]


def epoch_ms(moment: datetime) -> float:
    return moment.timestamp() * 1000.0


class ConsumerLatencyObserver:
    """A TelemetryConsumer batch observer: poll, to_kafka, consumer and to_consumer hops, sampled.

    Records that are not telemetry (the command results consumer) carry no ts: skipped.
    """

    def __init__(self, latencies: Latencies) -> None:
        self.latencies = latencies

    def __call__(self, messages: Sequence[Any], records: list[Any], duration_s: float) -> None:
        done_ms = time.time() * 1000.0
        now_s = time.monotonic()
        # messages and records line up unless decoding dead-lettered some: then sample the records
        # alone for ts and poll_ms, and messages alone for the Kafka timestamps.
        aligned = len(messages) == len(records)
        for index in sample_indexes(len(records)):
            record = records[index]
            if not isinstance(record, dict) or record.get("type") != "telemetry":
                continue
            try:
                ts_ms = epoch_ms(parse_ts(record["ts"]))
            except (KeyError, TypeError, ValueError):
                continue
            poll_ms = record.get("poll_ms")
            if isinstance(poll_ms, int | float):
                self.latencies.add("poll", float(poll_ms), now_s)
            self.latencies.add("to_consumer", done_ms - ts_ms, now_s)
            if aligned and messages[index].timestamp is not None:
                kafka_ms = float(messages[index].timestamp)
                self.latencies.add("to_kafka", kafka_ms - ts_ms, now_s)
                self.latencies.add("consumer", done_ms - kafka_ms, now_s)


class BridgeLatencyObserver:
    """A Bridge batch observer: the mqtt hop (bridge receipt, once persisted, - record ts), sampled.

    Only the sampled payloads are parsed; command results (no "ts" of a record) are skipped.
    """

    def __init__(self, latencies: Latencies) -> None:
        self.latencies = latencies

    def __call__(self, messages: Sequence[Any], received_at_s: float) -> None:
        now_s = time.monotonic()
        for index in sample_indexes(len(messages)):
            try:
                record = orjson.loads(messages[index].payload)
                if record.get("type") != "telemetry":
                    continue
                ts_ms = epoch_ms(parse_ts(record["ts"]))
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                continue  # not a record: the consumer dead-letters it, the bridge forwards it as is
            self.latencies.add("mqtt", received_at_s * 1000.0 - ts_ms, now_s)
