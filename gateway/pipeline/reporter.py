"""Each long-running process writes its StageStatus row every STAGE_STATUS_INTERVAL_S.

gateway/observe.py runs `report_status` beside the poller, the bridge and the consumer. It reads
counters the parts already keep (the outbox's depth and age, the consumers' lag per partition, ...),
adds the hop latencies its observers sample per batch (gateway/pipeline/latency.py) and the last
warning or error of the process (gateway/pipeline/errors.py), and upserts the row. When the
process stops (stop set, or the service's body ended and cancelled it) it writes the row once more
with `stopped_at`, so the page tells a clean stop from a process that died or hangs (its row just
ages). The page reads the rows (gateway/pipeline/report.py); the processes never talk to it.

A row is one process (kind, name, host, pid): two consumers of a group on one machine each have
theirs. A process starting replaces the rows its dead predecessors on this host left (their pid no
longer runs), and keeps the newest one's last error until it has one of its own: why the previous
process crashed stays on the page after the restart.
"""

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections

from gateway.conf import setting
from gateway.health.sites import site_problem
from gateway.metrics.families import copy_of
from gateway.models import StageStatus
from gateway.pipeline.errors import LastError, LastErrorHandler, install, scrub, uninstall
from gateway.pipeline.latency import BridgeLatencyObserver, ConsumerLatencyObserver, Latencies, percentile
from gateway.runtime import wait_unless_stopped
from gateway.telemetry import format_ts

logger = logging.getLogger(__name__)

# The row written when the process stops waits at most this long for the database.
FINAL_WRITE_TIMEOUT_S = 2.0
# Poll lateness: the newest this many samples of the poller's current stats period (sorting all of a
# 5,000 charge point fleet's period every few seconds would cost more than it tells).
LATENESS_SAMPLES = 5000
NAME_MAX_CHARS = 200
# A site's entry in the poller's `site_controllers` (a refused site has the first three and its holder).
SITE_KEYS = (
    "site",
    "state",
    "reason",
    "problem",
    "rounds",
    "urgent",
    "errors",
    "failed_in_a_row",
    "last_round_at",
    "last_round_ms",
    "period_s",
    "commands",
    "limit_a",
    "headroom_a",
    "draw_source",
    "meter_age_s",
    "holder",
    "holder_host",
)


def now_utc() -> datetime:
    return datetime.now(UTC)


class Rate:
    """Per-second rate of a counter between two reports."""

    def __init__(self) -> None:
        self.previous: tuple[float, int] | None = None

    def of(self, count: int, now_s: float) -> float | None:
        previous, self.previous = self.previous, (now_s, count)
        if previous is None or now_s <= previous[0]:
            return None
        return round(max(0, count - previous[1]) / (now_s - previous[0]), 2)


def outbox_stats(publisher: Any) -> dict[str, Any]:
    """Depth, age of the oldest, dropped, delivered and failed sends of an OutboxPublisher."""
    stats = publisher.stats
    try:
        age_s = stats.oldest_age_s
    except Exception:  # the outbox is closed (the process is stopping): its age cannot be read
        age_s = None
    return {
        "depth": stats.buffered,
        "oldest_age_s": None if age_s is None else round(age_s, 2),
        "dropped": stats.dropped,
        "delivered": stats.delivered,
        "failed_sends": stats.failed_sends,
        "stalled_s": round(stats.stalled_s(), 2),
    }


def consumer_stats(consumer: Any) -> dict[str, Any]:
    """What a TelemetryConsumer keeps: records handled, dead letters, lag per partition."""
    lag = {str(partition): lag for partition, lag in sorted(consumer.lag_by_partition.items())}
    return {
        "topic": consumer.topic,
        "group_id": consumer.group_id,
        "assigned": consumer.assigned.is_set(),
        "caught_up": consumer.caught_up,
        "handled": consumer.handled,
        "skipped": consumer.skipped,
        "failed": consumer.failed,
        "dead_lettered": consumer.dead_lettered,
        "lag": lag,
        "lag_total": sum(lag.values()),
    }


def site_control_stats(control: Any) -> dict[str, Any]:
    """The poller's site load management (sitecontrol.control.SiteControl.counters): sites controlled
    and refused, rounds (all, and the urgent ones among them), failed rounds, commands by action."""
    counters = control.counters
    return {
        "sites": counters["sites"],
        "refused": counters["refused"],
        "periods": counters["periods"],
        "urgent": counters["urgent"],
        "errors": counters["errors"],
        "commands": {key.removeprefix("commands_"): n for key, n in counters.items() if key.startswith("commands_")},
    }


def site_controller_stats(control: Any, now: datetime) -> list[dict[str, Any]]:
    """Each site of the poller's site load management, as the pipeline page shows it: the controlled
    ones from their controller (counters, last status; `problem` as gateway/health/sites.py judges
    it), then the refused ones with the poller that holds them. One shape: what a site lacks is null."""
    controlled = copy_of(control.controllers)
    sites = [controlled_site(controller, now) for _site, controller in sorted(controlled.items())]
    for site, outcome in sorted(copy_of(control.refused).items()):
        if site not in controlled:
            refused = {"site": site, "state": "refused", "reason": outcome.refusal}
            sites.append(dict.fromkeys(SITE_KEYS) | refused | {"holder": outcome.holder, "holder_host": outcome.host})
    return sites


def controlled_site(controller: Any, now: datetime) -> dict[str, Any]:
    """A SiteController's entry: its state and why, its rounds and commands, its last round's status."""
    counters, status, config = controller.counters, controller.last_status, controller.config
    reason = controller.reason if status is None else status.reason
    return {
        "site": config.site,
        "state": controller.state if status is None else status.state,
        "reason": scrub(reason) if reason else None,
        "problem": site_problem(controller, now),
        "rounds": counters.periods,
        "urgent": counters.urgent,
        "errors": counters.errors,
        "failed_in_a_row": counters.failed_in_a_row,
        "last_round_at": None if status is None else format_ts(status.at),
        "last_round_ms": round(counters.last_period_s * 1000, 1),
        "period_s": config.period_s,
        "commands": dict(sorted(copy_of(counters.commands).items())),
        "limit_a": config.limit_a if status is None else status.limit_a,
        "headroom_a": None if status is None else round(status.headroom_a, 1),
        "draw_source": None if status is None else status.draw_source,
        "meter_age_s": None if status is None else status.meter_age_s,
        "holder": None,
        "holder_host": None,
    }


class StatusProbe:
    """Reads one process's parts into its `stats`; attaches and detaches the latency observers."""

    def __init__(self, observed: Any) -> None:
        self.observed = observed
        self.kind = observed.kind
        self.latencies: dict[str, Latencies] = {}  # "" for the process, else a consumer group's name
        self.rates: dict[str, Rate] = {}
        self._detach: list[Any] = []

    def attach(self) -> None:
        parts = self.observed.parts
        if self.kind == "bridge" and parts.get("bridge") is not None:
            observer = BridgeLatencyObserver(self.latencies.setdefault("", Latencies()))
            self._add_observer(parts["bridge"].batch_observers, observer)
        if self.kind == "consumer":
            for group in parts.get("groups") or []:
                observer = ConsumerLatencyObserver(self.latencies.setdefault(group.name, Latencies()))
                self._add_observer(group.consumer.batch_observers, observer)

    def _add_observer(self, observers: list, observer: Any) -> None:
        observers.append(observer)
        self._detach.append(lambda: observer in observers and observers.remove(observer))

    def detach(self) -> None:
        for detach in self._detach:
            detach()
        self._detach.clear()

    def rate(self, key: str, count: int, now_s: float) -> float | None:
        return self.rates.setdefault(key, Rate()).of(count, now_s)

    def stats(self) -> dict[str, Any]:
        now_s = time.monotonic()
        stats: dict[str, Any] = {"interval_s": setting("STAGE_STATUS_INTERVAL_S")}
        parts = self.observed.parts
        if self.kind == "poller":
            stats |= self._poller(parts, now_s)
        elif self.kind == "bridge":
            stats |= self._bridge(parts, now_s)
        elif self.kind == "consumer":
            stats |= self._consumer(parts, now_s)
        if "" in self.latencies:
            stats["latency"] = self.latencies[""].summary()
        return stats

    def _poller(self, parts: dict[str, Any], now_s: float) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        poller, publisher = parts.get("poller"), parts.get("publisher")
        if poller is not None:
            stats["charge_points"] = len(poller.tasks)
            stats["unloadable"] = len(poller.unloadable)
            # The poller's current stats period (it starts a new one at each of its stats lines).
            lateness = sorted(poller.stats.lateness_s[-LATENESS_SAMPLES:])
            if lateness:
                stats["lateness"] = {
                    "p50_ms": round(percentile(lateness, 50) * 1000, 1),
                    "p95_ms": round(percentile(lateness, 95) * 1000, 1),
                }
        if publisher is not None:
            stats["output"] = publisher.transport.name
            stats["records"] = publisher.stats.published
            stats["records_per_s"] = self.rate("records", publisher.stats.published, now_s)
            stats["outbox"] = outbox_stats(publisher)
        runner = parts.get("runner")
        if runner is not None:
            stats["commands_taken"] = runner.delivered
        site_control = parts.get("site_control")
        if site_control is not None:
            stats["site_control"] = site_control_stats(site_control)
            stats["site_controllers"] = site_controller_stats(site_control, now_utc())
        return stats

    def _bridge(self, parts: dict[str, Any], now_s: float) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        bridge = parts.get("bridge")
        if bridge is not None:
            stats["output"] = "kafka"
            stats["records"] = bridge.received
            stats["records_per_s"] = self.rate("records", bridge.received, now_s)
            stats["malformed"] = bridge.malformed
            stats["mqtt_connects"] = bridge.mqtt_connects
            stats["results_received"] = bridge.results_received
            stats["outbox"] = outbox_stats(bridge.publisher)
        commands = parts.get("commands")
        if commands is not None:
            stats["commands_forwarded"] = commands.forwarded
        return stats

    def _consumer(self, parts: dict[str, Any], now_s: float) -> dict[str, Any]:
        groups = []
        for group in parts.get("groups") or []:
            entry = {"name": group.name} | consumer_stats(group.consumer)
            entry["records_per_s"] = self.rate(f"group:{group.name}", group.consumer.handled, now_s)
            latencies = self.latencies.get(group.name)
            entry["latency"] = latencies.summary() if latencies is not None else {}
            groups.append(entry)
        stats: dict[str, Any] = {"groups": groups}
        results = parts.get("results")
        if results is not None:
            stats["results"] = consumer_stats(results)
        site_status = parts.get("site_status")
        if site_status is not None:
            stats["site_status"] = consumer_stats(site_status)
        # Each group takes every record: the process's count is its busiest group's, not their sum.
        stats["records"] = max((group["handled"] for group in groups), default=0)
        rates = [group["records_per_s"] for group in groups if group["records_per_s"] is not None]
        stats["records_per_s"] = max(rates, default=None)
        stats["dead_letters"] = sum(group["dead_lettered"] for group in groups) + sum(
            stats[name]["dead_lettered"] for name in ("results", "site_status") if name in stats
        )
        stats["lag_total"] = sum(group["lag_total"] for group in groups)
        return stats


def write_status(
    *,
    kind: str,
    name: str,
    host: str,
    pid: int,
    started_at: datetime,
    stats: dict[str, Any],
    last_error: LastError | None,
    first: bool = False,
) -> None:
    """Upsert the row (sync: run in a thread). The first write replaces the rows of dead
    predecessors on this host, keeping the newest one's last error until this process has one."""
    close_old_connections()  # a long-running process: a connection the database dropped is replaced
    name = name[:NAME_MAX_CHARS]
    defaults: dict[str, Any] = {"started_at": started_at, "seen_at": now_utc(), "stats": stats}
    if last_error is not None:
        defaults |= {"last_error": last_error.message, "last_error_at": last_error.at}
    elif first:
        dead = [
            row
            for row in StageStatus.objects.filter(kind=kind, name=name, host=host).exclude(pid=pid)
            if not process_alive(row.pid)
        ]
        newest = max((row for row in dead if row.last_error_at), key=lambda row: row.last_error_at, default=None)
        if newest is not None:
            defaults |= {"last_error": newest.last_error, "last_error_at": newest.last_error_at}
        StageStatus.objects.filter(pk__in=[row.pk for row in dead]).delete()
    StageStatus.objects.update_or_create(kind=kind, name=name, host=host, pid=pid, defaults=defaults)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (the rows compared are this host's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


class StatusReporter:
    """One process's row: what it is, what it measured, when it last said so."""

    def __init__(self, observed: Any, errors: LastErrorHandler) -> None:
        self.observed = observed
        self.errors = errors
        self.probe = StatusProbe(observed)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = now_utc()
        self.failing_since: float | None = None  # the database refused our writes since then
        self.written = False  # the first write replaces dead predecessors' rows

    async def write(self, *, stopped: bool = False) -> None:
        stats = self.probe.stats()
        last, severe = self.errors.take()
        if last is not None:
            stats["last_error_level"] = last.level
            stats["last_error_logger"] = last.logger
        if severe is not None:  # what makes the stage "failing" for a while (report.ERROR_RECENT_S)
            stats["last_severe"] = {"message": severe.message, "level": severe.level, "at": format_ts(severe.at)}
        stats["stopped_at"] = format_ts(now_utc()) if stopped else None
        try:
            await sync_to_async(write_status)(
                kind=self.observed.kind,
                name=self.observed.name,
                host=self.host,
                pid=self.pid,
                started_at=self.started_at,
                stats=stats,
                last_error=last,
                first=not self.written,
            )
        except DatabaseError as exc:
            # The process goes on without its row: the page shows it stale, which it is to the page.
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                logger.warning("could not write the pipeline status row (%s); retrying every interval", exc)
            return
        self.written = True
        if self.failing_since is not None:
            logger.info("pipeline status row written again after %.0f s", time.monotonic() - self.failing_since)
            self.failing_since = None


async def report_status(observed: Any, stop: asyncio.Event) -> None:
    """Write `observed`'s status row every STAGE_STATUS_INTERVAL_S until stop is set or cancelled,
    then once more with stopped_at."""
    interval_s = setting("STAGE_STATUS_INTERVAL_S")
    errors = install()
    reporter = StatusReporter(observed, errors)
    reporter.probe.attach()
    try:
        while True:
            await reporter.write()
            if await wait_unless_stopped(stop, interval_s):
                break
    finally:
        reporter.probe.detach()
        try:
            await write_final(reporter)
        finally:
            uninstall(errors)


async def write_final(reporter: StatusReporter) -> None:
    """The row with stopped_at, within FINAL_WRITE_TIMEOUT_S. observing() cancels this task as soon as
    the service's body ends, often while we are here: the write is a task of its own, awaited
    through that cancellation (a cancelled await of the thread could drop the write before it ran)."""
    final = asyncio.create_task(reporter.write(stopped=True), name="stage-status-final")
    try:
        await asyncio.wait({final}, timeout=FINAL_WRITE_TIMEOUT_S)
    except asyncio.CancelledError:
        await asyncio.wait({final}, timeout=FINAL_WRITE_TIMEOUT_S)
        raise
    finally:
        if not final.done():
            final.cancel()
