"""The alert engine: a sink of the live group that evaluates the alert rules, one alert per episode.

- Records: each record-driven rule (faulted, offline, temperature, threshold: gateway/alerts/rules.py)
  judges the record; a condition that has held for the rule's hold_s raises, an open alert clears
  once the condition is over (past the hysteresis). An episode's raise and clear are the times of
  the records that decided them; a hold that runs out between records is raised by the clock.
- The clock (a job beside the consumer, every TICK_S): the holds that ran out, the stale rule
  (no record for longer than readings.stale_after_ms: read from LatestTelemetry, since a stopped
  poller sends nothing, and cleared once a fresh record is stored), the commands that failed since
  its last look (the sweeper's no_answer too), and the rules reloaded every RULES_RELOAD_S (the
  admin's edits apply without a restart; an open alert of a rule disabled or deleted is cleared).
- Command results (a sink of the results consumer): a failed command raises its alert at once.
- Site statuses (a sink of the site-status consumer, gateway/sitecontrol/consume.py): a site's
  load management, judged on each status its controller publishes every period. The subject (the
  alert's charge_point_slug) is "<site>-meter" for the meter, "<site>" for the others:
  - meter stale: raised on the first status whose draw comes from the fallback (no good meter
    reading for the site's meter_stale_s), cleared on the first with a measured draw again;
  - over the limit: raised when the draw exceeded the limit in OVER_LIMIT_STATUSES consecutive
    statuses (longer than one control period: a step the controller corrects within its period
    is no alert), cleared on the first status within it. A status on the fallback says nothing
    (its draw is not measured);
  - refused: raised on a status "refused" (a second poller found the site controlled by another),
    cleared by a later status of that poller, or by any status once no poller refused for
    REFUSED_QUIET (the refusing poller stopped).
  Only statuses of a poller that controls the site (controlling, fallback) judge the meter and
  the limit, so a refusing poller's statuses interleaved with them change nothing. A rule's hold_s
  is judged on the statuses' times (the clock does not raise site alerts: statuses come every period).

Cheap per record (the live group is the hot path): a record costs a few dictionary lookups and
one call per rule; the database is touched only for events. Idempotent: records at or before a
charge point's last applied (ts, seq) are skipped, and a restarted engine loads the open alerts
and skips redelivered records up to the last stored event of each charge point, so the same
records twice raise nothing twice. Stores that fail are kept and retried before the next batch.

What happens is stored with the deliveries it owes (one transaction per event), then pushed to the
pages (gateway.live.push.push_alerts) and handed to the notifier (gateway/alerts/notify.py: the
alerts topic, e-mail, webhooks), which never holds up a batch.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError

from gateway.alerts import store
from gateway.alerts.messages import alert_json
from gateway.alerts.notify import AlertNotifier
from gateway.alerts.rules import OFF, ON, CompiledRule, rule_value
from gateway.alerts.store import CLEAR, RAISE, SITE_KINDS, AlertEvent
from gateway.choices import AlertKind, CommandAction, CommandStatus
from gateway.commands.messages import CommandResult
from gateway.live.push import push_alerts
from gateway.models import Command
from gateway.runtime import wait_unless_stopped
from gateway.sitecontrol.messages import SiteStatus
from gateway.telemetry import Record, parse_ts

logger = logging.getLogger(__name__)

TICK_S = 1.0
RULES_RELOAD_S = 10.0
# A restarted engine skips redelivered records up to the last alert event of their charge point
# within this horizon (redelivery is of uncommitted batches: seconds, minutes after a crash).
MARK_HORIZON = timedelta(hours=1)
# Failed commands are looked for since the last look minus this (a command's completed_at is the
# poller's clock, or the sweeper's); a restarted engine looks back COMMAND_LOOKBACK.
COMMAND_OVERLAP = timedelta(seconds=60)
COMMAND_LOOKBACK = timedelta(minutes=10)
UNSTORED_CAPACITY = 10_000
# Over the limit in this many consecutive statuses (one every control period) raises the alert.
OVER_LIMIT_STATUSES = 2
# A refused alert clears by any poller's status once no poller refused the site for this long
# (a refusing poller publishes every period; a lease is fresh for 3 periods + 10 s).
REFUSED_QUIET = timedelta(seconds=30)
CONTROLLING_STATES = frozenset({"controlling", "fallback"})


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Episode:
    """A rule's condition on one charge point: pending since a time, and/or its open alert."""

    since: datetime | None = None
    alert_id: uuid.UUID | None = None


@dataclass(slots=True)
class SiteWatch:
    """What the engine remembers of one site between its statuses (the site alerts' conditions)."""

    stale_since: datetime | None = None
    over_since: datetime | None = None
    over_statuses: int = 0  # consecutive statuses over the limit
    refused_since: datetime | None = None
    refused_at: datetime | None = None  # the last status "refused", and of which poller
    refused_by: str = ""


class AlertEngine:
    """Sink: evaluate the alert rules on a batch of records; jobs() are its clock and notifier."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = now,
        notifier: AlertNotifier | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self.clock = clock
        self.notifier = notifier or AlertNotifier()
        self.tick_s = tick_s
        # Whether the live consumer holds the topic's newest records (TelemetryConsumer.caught_up):
        # while it catches up on a backlog (after a restart, say) every latest record looks old, and
        # the stale rule would blame pollers that never stopped. Set by whoever runs the consumer.
        self.pipeline_caught_up: Callable[[], bool] = lambda: True
        self.rules: list[CompiledRule] = []
        self._rules_by_id: dict[int, CompiledRule] = {}
        self._record_rules: list[CompiledRule] = []
        self._rules_for: dict[str, tuple[CompiledRule, ...]] = {}  # charge point -> its record rules
        self._episodes: dict[str, dict[int, Episode]] = {}  # charge point -> rule id -> episode
        self._sites: dict[str, str] = {}  # charge point -> site (from its records, or its alerts)
        self._marks: dict[str, tuple[str, int]] = {}  # charge point -> last (ts, seq) applied
        self._charge_point_ids: dict[str, int] = {}
        self._unstored: list[AlertEvent] = []
        self._loaded = False
        self._loaded_at = 0.0  # time.monotonic() of the last rule load
        self._commands_since: datetime | None = None
        self._site_watches: dict[str, SiteWatch] = {}
        # (site, poller) -> the newest status applied: a redelivered or older one is skipped (per
        # poller: two pollers' clocks differ). A restarted engine starts from each site's last stored event.
        self._status_marks: dict[tuple[str, str], datetime] = {}
        self._site_floors: dict[str, datetime] = {}
        self.evaluations = 0  # records judged against their rules (redelivered ones skipped): a metric
        self._lock = asyncio.Lock()  # the sinks and the clock take turns on the state

    # The sinks

    async def __call__(self, records: list[Record]) -> None:
        async with self._lock:
            if not self._loaded:
                await self._load()
            events = self.evaluate(records)
            await self._apply(events)

    async def on_command_results(self, results: list[CommandResult]) -> None:
        """Sink of the command results consumer: a failed command raises an alert (once per command)."""
        failed = [result for result in results if result.status == CommandStatus.FAILED]
        if not failed:
            return
        async with self._lock:
            if not self._loaded:
                await self._load()
            events = []
            for result in failed:
                events += self._command_events(
                    result.id,
                    result.charge_point,
                    result.site,
                    result.action,
                    result.reason or result.reason_code or "",
                    result.completed_at,
                )
            await self._apply(events)

    async def on_site_status(self, statuses: list[SiteStatus]) -> None:
        """Sink of the site-status consumer: the site alerts (meter stale, over the limit, refused)."""
        async with self._lock:
            if not self._loaded:
                await self._load()
            await self._apply(self.evaluate_sites(statuses))

    def jobs(self) -> dict[str, tuple[Callable[[asyncio.Event], Any], str]]:
        return {
            "the alert clock": (self.run_clock, "offline holds, stale telemetry and failed commands raise no alerts"),
            "the alert notifier": (self.notifier.run, "alerts are no longer published, e-mailed or posted"),
        }

    # Records

    def evaluate(self, records: Iterable[Record]) -> list[AlertEvent]:
        """The raises and clears a batch decides (the in-memory state moves on; the caller stores them)."""
        events: list[AlertEvent] = []
        evaluated = 0
        marks = self._marks
        rules_for = self._rules_for
        episodes = self._episodes
        for record in records:
            charge_point = record["charge_point"]
            ts = record["ts"]
            seq = record["seq"]
            mark = marks.get(charge_point)
            if mark is not None and (ts < mark[0] or (ts == mark[0] and seq <= mark[1])):
                continue  # applied already: a redelivered batch, or an older record
            marks[charge_point] = (ts, seq)
            evaluated += 1
            rules = rules_for.get(charge_point)
            if rules is None:
                rules = self._rules_of(charge_point, record["site"])
            open_here = episodes.get(charge_point)
            for rule in rules:
                verdict = rule.judge(record)  # type: ignore[misc]  (record rules have one)
                if verdict is None:
                    continue
                if verdict == ON:
                    episode = open_here.get(rule.id) if open_here else None
                    if episode is None:
                        episode = Episode()
                        if open_here is None:
                            open_here = episodes[charge_point] = {}
                        open_here[rule.id] = episode
                    elif episode.alert_id is not None:
                        continue  # raised already: one alert per episode
                    at = parse_ts(ts)
                    if episode.since is None:
                        episode.since = at
                    if (at - episode.since).total_seconds() >= rule.hold_s:
                        events.append(self._raise(rule, charge_point, record["site"], episode, at, record))
                elif open_here:
                    episode = open_here.get(rule.id)
                    if episode is None:
                        continue
                    episode.since = None  # BETWEEN or OFF: a pending condition starts over
                    if verdict == OFF and episode.alert_id is not None:
                        events.append(self._clear(rule, charge_point, episode, parse_ts(ts)))
                    if episode.alert_id is None:
                        del open_here[rule.id]
        self.evaluations += evaluated
        return events

    def _rules_of(self, charge_point: str, site: str) -> tuple[CompiledRule, ...]:
        rules = tuple(rule for rule in self._record_rules if rule.applies_to(charge_point, site))
        self._rules_for[charge_point] = rules
        self._sites[charge_point] = site
        return rules

    def _raise(
        self, rule: CompiledRule, charge_point: str, site: str, episode: Episode, at: datetime, record: Record | None
    ) -> AlertEvent:
        episode.alert_id = uuid.uuid4()
        value = rule_value(rule, record) if record is not None else None
        return AlertEvent(RAISE, episode.alert_id, rule, charge_point, site, at, rule.describe(record, value), value)

    def _clear(self, rule: CompiledRule, charge_point: str, episode: Episode, at: datetime) -> AlertEvent:
        assert episode.alert_id is not None
        event = AlertEvent(CLEAR, episode.alert_id, rule, charge_point, at=at)
        episode.alert_id = None
        episode.since = None
        return event

    # Site statuses

    def evaluate_sites(self, statuses: Iterable[SiteStatus]) -> list[AlertEvent]:
        """The raises and clears a batch of site statuses decides (in order; older and redelivered ones skipped)."""
        rules = [rule for rule in self.rules if rule.kind in SITE_KINDS]
        horizon = self.clock() - MARK_HORIZON
        events: list[AlertEvent] = []
        for status in statuses:
            mark_key = (status.site, status.poller)
            floor = self._status_marks.get(mark_key) or self._site_floors.get(status.site)
            if floor is not None and status.at <= floor:
                continue
            self._status_marks[mark_key] = status.at
            if status.at < horizon:
                continue  # an hour-old status (a new consumer group reading the topic's past) is nobody's news
            watch = self._site_watches.setdefault(status.site, SiteWatch())
            verdicts = site_verdicts(status, watch)
            for rule in rules:
                subject, verdict, since = verdicts[rule.kind]
                if verdict is None or not rule.applies_to(subject, status.site):
                    continue
                episodes = self._episodes.setdefault(subject, {})
                episode = episodes.setdefault(rule.id, Episode())
                self._sites[subject] = status.site
                if verdict == ON:
                    if (
                        episode.alert_id is None
                        and since is not None
                        and (status.at - since).total_seconds() >= rule.hold_s
                    ):
                        episode.alert_id = uuid.uuid4()
                        message, value = site_message(rule.kind, status, watch)
                        events.append(
                            AlertEvent(RAISE, episode.alert_id, rule, subject, status.site, status.at, message, value)
                        )
                elif episode.alert_id is not None:
                    events.append(self._clear(rule, subject, episode, status.at))
                if episode.alert_id is None:
                    del episodes[rule.id]
        self._forget_closed()
        return events

    # The clock

    async def run_clock(self, stop: asyncio.Event) -> None:
        """tick() every tick_s until stop is set; a database outage is logged and the next tick catches up."""
        while True:
            try:
                await self.tick()
            except DatabaseError as exc:
                logger.warning("alert clock: database unavailable (%s: %s); trying again", type(exc).__name__, exc)
            if await wait_unless_stopped(stop, self.tick_s):
                return

    async def tick(self) -> None:
        """One look by the clock: reload the rules when due, the holds that ran out, stale, failed commands."""
        async with self._lock:
            moment = self.clock()
            if not self._loaded:
                await self._load()
            elif time.monotonic() - self._loaded_at >= RULES_RELOAD_S:
                await self._apply(await self._reload_rules())
            events = self._holds_run_out(moment)
            events += await self._stale_events(moment)
            events += await self._failed_command_events(moment)
            await self._apply(events)

    def _holds_run_out(self, moment: datetime) -> list[AlertEvent]:
        events = []
        for charge_point, episodes in self._episodes.items():
            for rule_id, episode in episodes.items():
                if episode.alert_id is not None or episode.since is None:
                    continue
                rule = self._rules_by_id.get(rule_id)
                if rule is not None and (moment - episode.since).total_seconds() >= rule.hold_s:
                    site = self._sites.get(charge_point, "")
                    events.append(self._raise(rule, charge_point, site, episode, moment, None))
        return events

    async def _stale_events(self, moment: datetime) -> list[AlertEvent]:
        rules = [rule for rule in self.rules if rule.kind == AlertKind.STALE]
        if not rules or not self.pipeline_caught_up():
            return []  # neither raise nor clear on records that may be behind the topic
        stale = await sync_to_async(store.stale_charge_points)(moment)
        events = []
        for rule in rules:
            for charge_point, site in stale.items():
                if not rule.applies_to(charge_point, site):
                    continue
                episode = self._episodes.setdefault(charge_point, {}).setdefault(rule.id, Episode())
                if episode.alert_id is None:
                    self._sites.setdefault(charge_point, site)
                    episode.since = moment
                    events.append(self._raise(rule, charge_point, site, episode, moment, None))
            for charge_point, episodes in self._episodes.items():
                episode = episodes.get(rule.id)
                if episode is not None and episode.alert_id is not None and charge_point not in stale:
                    events.append(self._clear(rule, charge_point, episode, moment))
        self._forget_closed()
        return events

    async def _failed_command_events(self, moment: datetime) -> list[AlertEvent]:
        """Commands failed since the last look: the sweeper's no_answer and the server's own failures
        reach no results consumer, and a result missed while this engine was down is caught too."""
        if not any(rule.kind == AlertKind.COMMAND_FAILED for rule in self.rules):
            return []
        since = self._commands_since or moment - COMMAND_LOOKBACK
        self._commands_since = moment
        failed: list[Command] = await sync_to_async(store.failed_commands)(since - COMMAND_OVERLAP)
        events = []
        for command in failed:
            events += self._command_events(
                str(command.id),
                command.charge_point_slug,
                command.site_slug,
                command.action,
                command.reason or command.reason_code,
                command.completed_at or moment,
            )
        if events:  # most were raised already (results, the last look): only the new ones go on
            known: set[str] = set()
            for name in {event.rule.name for event in events}:
                subjects = [event.subject for event in events if event.rule.name == name]
                known |= {f"{name}\n{s}" for s in await sync_to_async(store.known_subjects)(name, subjects)}
            events = [event for event in events if f"{event.rule.name}\n{event.subject}" not in known]
        return events

    def _command_events(
        self, command_id: str, charge_point: str, site: str, action: str, reason: str, at: datetime
    ) -> list[AlertEvent]:
        label = CommandAction(action).label if action in CommandAction.values else action
        message = f"{label} failed: {reason}" if reason else f"{label} failed."
        return [
            AlertEvent(RAISE, uuid.uuid4(), rule, charge_point, site, at, message, subject=command_id)
            for rule in self.rules
            if rule.kind == AlertKind.COMMAND_FAILED and rule.applies_to(charge_point, site)
        ]

    # State

    async def _load(self) -> None:
        """The rules, the open alerts (taken up, not raised again) and where redelivered records stop."""
        await self._apply(await self._reload_rules())
        open_alerts = await sync_to_async(store.open_alerts)()
        marks = await sync_to_async(store.record_marks)(self.clock() - MARK_HORIZON)
        self._site_floors = await sync_to_async(store.site_marks)(self.clock() - MARK_HORIZON)
        for alert in open_alerts:
            if alert.rule_id in self._rules_by_id:
                episode = self._episodes.setdefault(alert.charge_point_slug, {}).setdefault(alert.rule_id, Episode())
                episode.alert_id = alert.id
        for charge_point, ts in marks.items():
            if charge_point not in self._marks:
                self._marks[charge_point] = (ts, 1 << 62)  # every record at that ms was seen
        self._loaded = True

    async def _reload_rules(self) -> list[AlertEvent]:
        """Load the rules again; open alerts of rules no longer enabled are cleared."""
        self.rules = await sync_to_async(store.load_rules)()
        self._charge_point_ids = await sync_to_async(store.charge_point_ids)()
        self._loaded_at = time.monotonic()
        self._rules_by_id = {rule.id: rule for rule in self.rules}
        self._record_rules = [rule for rule in self.rules if rule.judge is not None]
        self._rules_for.clear()
        events = []
        moment = self.clock()
        for charge_point, episodes in self._episodes.items():
            for rule_id in [rule_id for rule_id in episodes if rule_id not in self._rules_by_id]:
                episode = episodes.pop(rule_id)
                if episode.alert_id is not None:
                    events.append(AlertEvent(CLEAR, episode.alert_id, _GONE, charge_point, at=moment))
        self._forget_closed()
        return events

    def _forget_closed(self) -> None:
        for charge_point in [cp for cp, episodes in self._episodes.items() if not episodes]:
            del self._episodes[charge_point]
        for episodes in self._episodes.values():
            for rule_id in [rule_id for rule_id, e in episodes.items() if e.alert_id is None and e.since is None]:
                del episodes[rule_id]

    async def _apply(self, events: list[AlertEvent]) -> None:
        """Store the events (with those a failed store left), then push and queue what changed.

        A store that fails keeps its events for the next call and raises: the consumer retries
        the batch (its records are applied already and decide nothing twice).
        """
        if not events and not self._unstored:
            return
        pending = self._unstored + events
        try:
            saved = await sync_to_async(store.save_events)(pending, self._charge_point_ids)
        except Exception:
            self._unstored = pending[-UNSTORED_CAPACITY:]
            raise
        self._unstored = []
        if saved.adopted:
            for episodes in self._episodes.values():
                for episode in episodes.values():
                    if episode.alert_id in saved.adopted:
                        episode.alert_id = saved.adopted[episode.alert_id]
        if not saved.announced:
            return
        self.notifier.enqueue(saved.deliveries)
        messages = [alert_json(alert, event) for alert, event, _rule in saved.announced]
        try:
            await push_alerts(messages)
        except Exception:  # the pages miss an update (they reload the open alerts): not the batch's failure
            logger.exception("could not push %d alert updates", len(messages))


def site_verdicts(status: SiteStatus, watch: SiteWatch) -> dict[str, tuple[str, int | None, datetime | None]]:
    """kind -> (subject, ON/OFF/None, since when the condition holds) for one status; moves the watch on."""
    site = status.site
    controlling = status.state in CONTROLLING_STATES
    stale: int | None = None
    over: int | None = None
    if controlling:
        stale = ON if status.draw_source == "fallback" else OFF
        watch.stale_since = (watch.stale_since or status.at) if stale == ON else None
        if status.draw_source != "fallback":  # a fallback's draw is not measured: no word on the limit
            if status.headroom_a < 0:
                watch.over_statuses += 1
                watch.over_since = watch.over_since or status.at
                over = ON if watch.over_statuses >= OVER_LIMIT_STATUSES else None
            else:
                watch.over_statuses, watch.over_since, over = 0, None, OFF
    refused: int | None = None
    if status.state == "refused":
        refused = ON
        watch.refused_since = watch.refused_since or status.at
        watch.refused_at, watch.refused_by = status.at, status.poller
    elif watch.refused_at is None or watch.refused_by == status.poller or status.at - watch.refused_at >= REFUSED_QUIET:
        refused = OFF
        watch.refused_since = watch.refused_at = None
        watch.refused_by = ""
    return {
        AlertKind.SITE_METER_STALE: (f"{site}-meter", stale, watch.stale_since),
        AlertKind.SITE_OVER_LIMIT: (site, over, watch.over_since),
        AlertKind.SITE_CONTROL_REFUSED: (site, refused, watch.refused_since),
    }


def site_message(kind: str, status: SiteStatus, watch: SiteWatch) -> tuple[str, float | None]:
    """A site alert's message and value (the meter's age, the draw over the limit), in an operator's words."""
    if kind == AlertKind.SITE_METER_STALE:
        age = "" if status.meter_age_s is None else f" (no good reading for {status.meter_age_s:.0f} s)"
        why = f" {status.reason}" if status.reason else ""
        return (
            f"The site meter of {status.site} is stale{age}: its chargers are on their failsafe shares.{why}",
            status.meter_age_s,
        )
    if kind == AlertKind.SITE_OVER_LIMIT:
        draw_a = max(status.draw_a)
        return (
            f"Site {status.site} draws {draw_a:.1f} A on its most loaded phase, over its {status.limit_a:g} A "
            f"limit for {watch.over_statuses} control periods.",
            draw_a,
        )
    return (
        f"Load management of {status.site} refused by poller {status.poller}: {status.reason or 'no reason given'}",
        None,
    )


# What a clear of an alert whose rule is gone is attributed to: no notifications.
_GONE = CompiledRule(
    id=0,
    name="(rule disabled or deleted)",
    kind="",
    severity="",
    hold_s=0.0,
    site=None,
    charge_point=None,
    notify_emails=(),
    webhook_url="",
    judge=None,
)
