"""Readiness of the workers (runpoller, runbridge, runconsumer), served on their --metrics-port.

readiness_for(observed) is called from the metrics server's threads while the worker's event
loop runs elsewhere. So the checks only read what the parts already keep (ints, bools, an
asyncio.Event's is_set()): no coroutine, no call into the loop's objects, no read of an outbox's
SQLite file (its connection belongs to the loop). The one exception is the database, which each
probe asks on a thread and a connection of its own (checks.BlockingProbe).

Per kind:
- poller: the database answers; the fleet was read from it at least once; the outbox is not stuck
  (records waiting and none delivered for STUCK_AFTER_S: the broker, Kafka or MQTT, is away); no
  site controller keeps failing its rounds or has stopped running them (gateway/health/sites.py:
  a site in fallback or refused is not a failure of this process).
- bridge: the MQTT broker was connected (and the command half's connection is up); its outbox to
  Kafka is not stuck.
- consumer: the database answers; each consumer (live, history, command results, site status) is
  connected to Kafka and has partitions assigned.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.health.checks import BlockingProbe, CheckResult, ping_database, transitions
from gateway.health.sites import site_problem
from gateway.metrics.families import copy_of

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


def site_control_check(control: Any) -> Check:
    """The poller's site controllers run their rounds (SiteControl: sitecontrol/control.py); the
    detail names each site that does not."""

    def check() -> CheckResult:
        controllers = copy_of(control.controllers)
        refused = [site for site in copy_of(control.refused) if site not in controllers]
        now = datetime.now(UTC)
        problems = [
            problem
            for _site, controller in sorted(controllers.items())
            if (problem := site_problem(controller, now)) is not None
        ]
        count = len(controllers)
        good = f"{count} site{'' if count == 1 else 's'} controlled" + (f", {len(refused)} refused" if refused else "")
        return flag("site control", not problems, good, "; ".join(problems))

    return check


def poller_checks(parts: dict[str, Any]) -> list[Check]:
    poller, publisher = parts["poller"], parts["publisher"]

    def fleet() -> CheckResult:
        return flag("fleet", poller.reloads > 0, f"{len(poller.tasks)} charge points", "not read from the database yet")

    checks: list[Check] = [
        BlockingProbe("database", ping_database).run,
        fleet,
        OutboxWatch(f"outbox ({publisher.transport.name})", publisher),
    ]
    if parts.get("site_control") is not None:
        checks.append(site_control_check(parts["site_control"]))
    return checks


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
    if parts.get("site_status") is not None:
        checks.append(consumer_check("kafka (site status)", parts["site_status"]))
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
