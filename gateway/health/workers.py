"""Readiness of the workers (runpoller, runbridge, runconsumer), served on their --metrics-port.

readiness_for(observed) is called from the metrics server's threads while the worker's event
loop runs elsewhere. So the checks only read what the parts already keep (ints, bools, an
asyncio.Event's is_set()): no coroutine, no call into the loop's objects, no read of an outbox's
SQLite file (its connection belongs to the loop). The one exception is the database, which each
probe asks on a thread and a connection of its own (checks.BlockingProbe).

Per kind:
- poller: the database answers; the fleet was read from it at least once; the outbox is not stuck
  (records waiting and none delivered for STUCK_AFTER_S: the broker, Kafka or MQTT, is away).
- bridge: the MQTT broker was connected (and the command half's connection is up); its outbox to
  Kafka is not stuck.
- consumer: the database answers; each consumer (live, history, command results) is connected to
  Kafka and has partitions assigned.
"""

from collections.abc import Callable
from typing import Any

from gateway.health.checks import BlockingProbe, CheckResult, ping_database, transitions

# Records waiting in an outbox with none delivered for this long: the transport is away. The
# publisher retries every 5 s at most (publish.publisher.RETRY_MAX_S): three attempts failed.
STUCK_AFTER_S = 15.0

Check = Callable[[], CheckResult]


def flag(name: str, ok: bool, good: str, bad: str) -> CheckResult:
    """A check that reads a flag: its result, logged when it changes."""
    result = CheckResult(name, ok, good if ok else bad)
    transitions.note(result)
    return result


class OutboxWatch:
    """The outbox of a publisher is moving: empty, or delivering (PublishStats.stalled_s: records
    waiting with none delivered for STUCK_AFTER_S means the transport has been away that long)."""

    def __init__(self, name: str, publisher: Any, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.name = name
        self.publisher = publisher
        self.stuck_after_s = stuck_after_s

    def __call__(self) -> CheckResult:
        stats = self.publisher.stats
        waiting, delivered, still_s = stats.buffered, stats.delivered, stats.stalled_s()
        return flag(
            self.name,
            still_s < self.stuck_after_s,
            f"{waiting} waiting, {delivered} delivered",
            f"{waiting} records waiting, none delivered for {still_s:.0f} s",
        )


def consumer_check(name: str, consumer: Any) -> Check:
    """A TelemetryConsumer is connected to Kafka and has partitions assigned."""

    def check() -> CheckResult:
        connected = consumer.connected
        assigned = consumer.assigned.is_set()
        bad = "not connected to Kafka" if not connected else "no partitions assigned yet"
        return flag(name, connected and assigned, f"connected, lag {sum(consumer.lag_by_partition.values())}", bad)

    return check


def poller_checks(parts: dict[str, Any]) -> list[Check]:
    poller, publisher = parts["poller"], parts["publisher"]

    def fleet() -> CheckResult:
        return flag("fleet", poller.reloads > 0, f"{len(poller.tasks)} charge points", "not read from the database yet")

    return [
        BlockingProbe("database", ping_database).run,
        fleet,
        OutboxWatch(f"outbox ({publisher.transport.name})", publisher),
    ]


def bridge_checks(parts: dict[str, Any]) -> list[Check]:
    bridge, commands = parts["bridge"], parts.get("commands")

    def mqtt() -> CheckResult:
        up = bridge.mqtt_connected and (commands is None or commands.connected)
        return flag("mqtt", up, f"connected ({bridge.mqtt_connects} connects)", "not connected to the MQTT broker")

    return [mqtt, OutboxWatch("outbox (kafka)", bridge.publisher)]


def consumer_checks(parts: dict[str, Any]) -> list[Check]:
    checks: list[Check] = [BlockingProbe("database", ping_database).run]
    checks += [consumer_check(f"kafka ({group.name})", group.consumer) for group in parts.get("groups", [])]
    if parts.get("results") is not None:
        checks.append(consumer_check("kafka (command results)", parts["results"]))
    return checks


CHECKS_BY_KIND: dict[str, Callable[[dict[str, Any]], list[Check]]] = {
    "poller": poller_checks,
    "bridge": bridge_checks,
    "consumer": consumer_checks,
}


def readiness_for(observed: Any) -> Callable[[], list[CheckResult]]:
    """A readiness probe for `observed`, called from the metrics server's thread."""
    checks = CHECKS_BY_KIND[observed.kind](observed.parts)

    def readiness() -> list[CheckResult]:
        return [check() for check in checks]

    return readiness
