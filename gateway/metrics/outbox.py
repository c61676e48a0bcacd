"""Metrics of an outbox and its publisher (the poller's and the bridge's): depth, age, losses."""

import contextlib
import logging
import sqlite3
from collections.abc import Iterator

from prometheus_client.core import Metric

from gateway.metrics.families import counter, gauge
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher

logger = logging.getLogger(__name__)

READ_TIMEOUT_S = 1.0


def oldest_age_s(outbox: Outbox) -> float:
    """Seconds the oldest waiting message has waited (0 when none), read on a connection of our own.

    The outbox's connection belongs to the event loop's thread, which may be inside a transaction;
    a second, read-only connection reads the WAL file's last committed state beside it and never
    holds up the writer.
    """
    if not outbox.count:
        return 0.0
    try:
        uri = f"{outbox.path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=READ_TIMEOUT_S)) as db:
            row = db.execute("SELECT created_s FROM outbox ORDER BY id LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        logger.warning("could not read the age of the outbox %s: %s", outbox.path, exc)
        return 0.0
    return 0.0 if row is None else max(0.0, outbox.clock() - row[0])


def outbox_metrics(publisher: OutboxPublisher) -> Iterator[Metric]:
    """The outbox's gauges and the publisher's counters since the process started."""
    stats = publisher.stats
    yield gauge("evdash_outbox_messages", "Messages in the outbox, waiting for their transport.", stats.buffered)
    yield gauge("evdash_outbox_bytes", "Keys and values of the messages in the outbox.", publisher.outbox.size_bytes)
    yield gauge(
        "evdash_outbox_oldest_age_seconds",
        "Age of the oldest message waiting in the outbox (0 when empty).",
        oldest_age_s(publisher.outbox),
    )
    yield counter("evdash_outbox_published_total", "Messages handed to the publisher.", stats.published)
    yield counter(
        "evdash_outbox_delivered_total", "Messages the transport confirmed (and left the outbox).", stats.delivered
    )
    yield counter(
        "evdash_outbox_dropped_total",
        "Messages the outbox dropped at its size or age limit, oldest first.",
        stats.dropped,
    )
    yield counter(
        "evdash_outbox_failed_sends_total",
        "Messages of sends that failed (they stay in the outbox and are sent again).",
        stats.failed_sends,
    )
