"""What the telemetry consumers do with each batch: the sink groups runconsumer assembles.

Two consumer groups read the telemetry topic, each with its own offsets, so one never waits for
the other:
- **live** (EVDASH_CONSUMER_GROUP): the latest state of each charge point, the alert rules, then
  the push to the dashboards. One upsert per batch: what the operator sees now is never behind a
  slow history database.
- **history** (EVDASH_CONSUMER_GROUP + "-history"): the telemetry history, then the charging
  sessions derived from it (and a job that ends the sessions of chargers gone silent). A new
  history group starts from the earliest offset the topic still holds, so what was published
  before it first ran is stored too.

A group commits a batch only when every one of its sinks handled it (gateway/kafka/consumer.py),
and every sink tolerates a batch twice. A new sink is a function (or object) taking a batch of
records, added here: it touches no Kafka code.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.alerts.engine import AlertEngine
from gateway.conf import setting
from gateway.history.maintenance import run_maintenance
from gateway.history.store import store_history
from gateway.kafka.consumer import Sink, TelemetryConsumer
from gateway.kafka.topics import telemetry_topic
from gateway.live.push import push_telemetry
from gateway.sessions.silence import SilentSessionCloser
from gateway.sessions.sink import SessionSink
from gateway.storage import store_latest

LIVE = "live"
HISTORY = "history"
GROUPS = (LIVE, HISTORY)

# A background job of a sink (e.g. the alert engine's clock): runs until its stop event is set.
Job = Callable[[Any], Awaitable[None]]


@dataclass
class SinkGroup:
    """One consumer group's sinks, in order, and the background jobs they need beside the consumer."""

    name: str
    consumer: TelemetryConsumer
    # name -> (job taking a stop event, what its failure costs): run with the consumer by run_consumer.
    jobs: dict[str, tuple[Job, str]] = field(default_factory=dict)


def group_id(name: str) -> str:
    """The Kafka consumer group of a sink group: the live one is EVDASH_CONSUMER_GROUP itself."""
    base = setting("CONSUMER_GROUP")
    return base if name == LIVE else f"{base}-{name}"


def live_group(*, alerts: AlertEngine | None = None, topic: str | None = None, **options: Any) -> SinkGroup:
    """Latest state -> alerts -> live push, in the group EVDASH_CONSUMER_GROUP."""
    alerts = alerts or AlertEngine()
    consumer = TelemetryConsumer(
        topic or telemetry_topic(),
        group_id=options.pop("group_id", None) or group_id(LIVE),
        sinks=[store_latest, alerts, push_telemetry],
        **options,
    )
    alerts.pipeline_caught_up = lambda: consumer.caught_up
    return SinkGroup(LIVE, consumer, alerts.jobs())


def history_group(*, topic: str | None = None, **options: Any) -> SinkGroup:
    """History -> sessions, in the group EVDASH_CONSUMER_GROUP-history, from the earliest offset when new."""
    options.setdefault("auto_offset_reset", "earliest")
    consumer = TelemetryConsumer(
        topic or telemetry_topic(),
        group_id=options.pop("group_id", None) or group_id(HISTORY),
        sinks=[store_history, SessionSink()],
        **options,
    )
    # Partitions ahead, rollups of completed minutes, retention: beside the consumer that stores.
    # Sessions of chargers that went silent (no record will come to end them), once caught up.
    closer = SilentSessionCloser(caught_up=lambda: consumer.caught_up)
    jobs = {
        "the history maintenance": (run_maintenance, "history is no longer rolled up nor pruned"),
        "the silent session closer": (closer, "sessions of chargers that went silent stay open"),
    }
    return SinkGroup(HISTORY, consumer, jobs)


def live_consumer(topic: str | None = None, **options: Any) -> TelemetryConsumer:
    """The live group's consumer alone (tests and benchmarks that need no alert clock)."""
    return live_group(topic=topic, **options).consumer


def build_groups(names: tuple[str, ...] = GROUPS, **options: Any) -> list[SinkGroup]:
    """The sink groups runconsumer runs (`--only live` or `--only history` runs one of them)."""
    builders = {LIVE: live_group, HISTORY: history_group}
    unknown = set(names) - builders.keys()
    if unknown:
        raise ValueError(f"unknown sink groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    return [builders[name](**options) for name in names]


__all__ = ["GROUPS", "HISTORY", "LIVE", "Sink", "SinkGroup", "build_groups", "group_id", "live_consumer"]
