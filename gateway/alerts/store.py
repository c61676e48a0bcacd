"""What the alert engine reads and writes in the database (sync: the engine calls it through sync_to_async).

Writes are idempotent, so that a batch handled twice, or two consumers raising the same alert,
change nothing: a raise creates the alert under the partial unique constraints of
gateway/models/alerts.py (an open alert of the same rule and charge point, or an alert of the
same rule and subject, is adopted instead), and a clear only updates an alert still open.

An event stored also records, in the same transaction, the deliveries it owes (owe(): AlertDelivery
rows, the outbox gateway/alerts/notify.py delivers): the alerts topic always, e-mail and webhook
per the rule. A crash between the event and its deliveries loses neither.
"""

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from gateway.alerts.messages import CLEARED, RAISED, alert_json
from gateway.alerts.rules import RECORD_KINDS, CompiledRule, compile_rule
from gateway.choices import AlertKind, CommandStatus, DeliveryChannel, DeliveryStatus
from gateway.models import Alert, AlertDelivery, AlertRule, ChargePoint, Command, LatestTelemetry
from gateway.readings import STALE_MIN_MS, is_stale
from gateway.telemetry import format_ts

logger = logging.getLogger(__name__)

RAISE = "raise"
CLEAR = "clear"
# The site load management's kinds: judged on the site statuses (gateway.alerts.engine.evaluate_sites).
SITE_KINDS = frozenset({AlertKind.SITE_METER_STALE, AlertKind.SITE_OVER_LIMIT, AlertKind.SITE_CONTROL_REFUSED})


@dataclass
class AlertEvent:
    """A raise or a clear the engine decided, to be stored (then published and notified)."""

    action: str  # RAISE or CLEAR
    alert_id: uuid.UUID
    rule: CompiledRule
    charge_point: str
    site: str = ""
    at: datetime | None = None  # when it was raised (RAISE) or cleared (CLEAR)
    message: str = ""
    value: float | None = None
    subject: str = ""  # event-like alerts (a command failed): raised and cleared at once


@dataclass
class Saved:
    """What save_events did: the alerts to announce (with their event) and the ids it adopted."""

    announced: list[tuple[Alert, str, CompiledRule]] = field(default_factory=list)
    # An engine's id -> the id of the alert already open in the database (raised by another consumer,
    # or before a restart): the engine's episode takes the stored one.
    adopted: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    deliveries: list[AlertDelivery] = field(default_factory=list)  # owed by the announced events


def load_rules() -> list[CompiledRule]:
    """The enabled rules, compiled; a rule that does not compile (clean() would refuse it) is logged and skipped."""
    close_old_connections()
    compiled = []
    for rule in AlertRule.objects.filter(enabled=True).select_related("site", "charge_point"):
        site = rule.site.slug if rule.site else None
        charge_point = rule.charge_point.slug if rule.charge_point else None
        result = compile_rule(rule, site, charge_point)
        if result is None:
            logger.warning("alert rule %r is incomplete (value, comparator, threshold); not evaluated", rule.name)
            continue
        compiled.append(result)
    return compiled


def charge_point_ids() -> dict[str, int]:
    """slug -> id of every charge point (the alerts' foreign key; an unknown slug keeps only its text)."""
    return dict(ChargePoint.objects.values_list("slug", "id"))


def open_alerts() -> list[Alert]:
    """Every alert not cleared yet: a restarted engine takes them up instead of raising them again."""
    close_old_connections()
    return list(Alert.objects.filter(cleared_at__isnull=True).only("id", "rule_id", "rule_name", "charge_point_slug"))


def record_marks(since: datetime) -> dict[str, str]:
    """charge point -> the time (as a record's ts) of its last alert event from a record since `since`.

    A restarted engine skips redelivered records up to it: the episode they raised or cleared is
    stored already, and replaying a fault that was cleared would raise it a second time.
    """
    rows = (
        Alert.objects.filter(kind__in=RECORD_KINDS)
        .filter(Q(raised_at__gte=since) | Q(cleared_at__gte=since))
        .values("charge_point_slug")
        .annotate(raised=Max("raised_at"), cleared=Max("cleared_at"))
    )
    marks = {}
    for row in rows:
        moments = [moment for moment in (row["raised"], row["cleared"]) if moment is not None]
        marks[row["charge_point_slug"]] = format_ts(max(moments))
    return marks


def site_marks(since: datetime) -> dict[str, datetime]:
    """site -> the time of its last site alert event since `since` (gateway.alerts.engine.SITE_KINDS).

    A restarted engine skips redelivered site statuses up to it, as record_marks does for records.
    """
    rows = (
        Alert.objects.filter(kind__in=SITE_KINDS)
        .filter(Q(raised_at__gte=since) | Q(cleared_at__gte=since))
        .values("site_slug")
        .annotate(raised=Max("raised_at"), cleared=Max("cleared_at"))
    )
    return {
        row["site_slug"]: max(moment for moment in (row["raised"], row["cleared"]) if moment is not None)
        for row in rows
    }


def stale_charge_points(now: datetime) -> dict[str, str]:
    """slug -> site of each enabled charge point whose last record is stale at `now` (readings.is_stale)."""
    close_old_connections()
    # Nothing is stale sooner than STALE_MIN_MS: the database returns only those candidates.
    candidates = LatestTelemetry.objects.filter(
        charge_point__enabled=True, source_ts__lt=now - timedelta(milliseconds=STALE_MIN_MS)
    ).values_list("charge_point__slug", "charge_point__site__slug", "source_ts", "charge_point__poll_interval_ms")
    return {slug: site for slug, site, source_ts, poll_ms in candidates if is_stale(source_ts, now, poll_ms)}


def failed_commands(since: datetime) -> list[Command]:
    """Commands that failed (a poller's result, the sweeper's no answer, a send Kafka refused) since `since`."""
    close_old_connections()
    return list(Command.objects.filter(status=CommandStatus.FAILED, completed_at__gte=since).order_by("completed_at"))


def known_subjects(rule_name: str, subjects: Iterable[str]) -> set[str]:
    """Which of these subjects (command ids) already have an alert of the rule."""
    return set(Alert.objects.filter(rule_name=rule_name, subject__in=list(subjects)).values_list("subject", flat=True))


def save_events(events: list[AlertEvent], ids: dict[str, int]) -> Saved:
    """Store raises and clears in order; what changed is returned to be announced."""
    close_old_connections()
    saved = Saved()
    for event in events:
        alert_id = saved.adopted.get(event.alert_id, event.alert_id)
        if event.action == RAISE:
            alert = _raise(event, alert_id, ids, saved)
            if alert is not None:
                saved.announced.append((alert, RAISED, event.rule))
        else:
            alert = _clear(alert_id, event.at, event.rule, saved)
            if alert is not None:
                saved.announced.append((alert, CLEARED, event.rule))
    return saved


def owe(alert: Alert, event: str, emails: tuple[str, ...] = (), webhook_url: str = "") -> list[AlertDelivery]:
    """Record the deliveries an event owes (call it in the event's transaction): the alerts topic,
    and the rule's e-mail and webhook."""
    message = alert_json(alert, event)
    owed = [AlertDelivery(alert=alert, event=event, channel=DeliveryChannel.KAFKA, message=message)]
    if emails:
        owed.append(
            AlertDelivery(
                alert=alert, event=event, channel=DeliveryChannel.EMAIL, target="\n".join(emails), message=message
            )
        )
    if webhook_url:
        owed.append(
            AlertDelivery(
                alert=alert, event=event, channel=DeliveryChannel.WEBHOOK, target=webhook_url, message=message
            )
        )
    return AlertDelivery.objects.bulk_create(owed)


def owed_deliveries(older_than_s: float = 0.0) -> list[AlertDelivery]:
    """The deliveries still pending (created more than older_than_s ago), oldest first: a notifier
    that starts delivers them, and looks again now and then."""
    close_old_connections()
    owed = AlertDelivery.objects.filter(status=DeliveryStatus.PENDING)
    if older_than_s:
        owed = owed.filter(created_at__lt=timezone.now() - timedelta(seconds=older_than_s))
    return list(owed.order_by("id"))


def mark_done(ids: list[int]) -> int:
    """Delivered: only those still pending change (conditional), so a delivery is done once."""
    return AlertDelivery.objects.filter(id__in=ids, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.DONE, done_at=timezone.now()
    )


def note_failed_attempt(delivery_id: int, given_up: bool) -> None:
    """One more failed attempt (counted across restarts); past the last one the delivery is given up."""
    close_old_connections()
    changes: dict = {"attempts": F("attempts") + 1}
    if given_up:
        changes |= {"status": DeliveryStatus.GIVEN_UP, "done_at": timezone.now()}
    AlertDelivery.objects.filter(id=delivery_id, status=DeliveryStatus.PENDING).update(**changes)


def _raise(event: AlertEvent, alert_id: uuid.UUID, ids: dict[str, int], saved: Saved) -> Alert | None:
    alert = Alert(
        id=alert_id,
        rule_id=event.rule.id,
        rule_name=event.rule.name,
        kind=event.rule.kind,
        severity=event.rule.severity,
        charge_point_id=ids.get(event.charge_point),
        charge_point_slug=event.charge_point,
        site_slug=event.site,
        message=event.message,
        value=event.value,
        subject=event.subject,
        raised_at=event.at,
        cleared_at=event.at if event.subject else None,
    )
    if Alert.objects.filter(id=alert_id).exists():  # stored already (the batch is handled again)
        return None
    try:
        with transaction.atomic():
            alert.save(force_insert=True)
            deliveries = owe(alert, RAISED, event.rule.notify_emails, event.rule.webhook_url)
    except IntegrityError:
        existing = _existing(event)
        if existing is None:
            raise
        if existing.id != alert_id:
            saved.adopted[event.alert_id] = existing.id
        return None
    saved.deliveries += deliveries
    logger.info(
        "alert raised: %s on %s (%s): %s", event.rule.name, event.charge_point, event.rule.severity, event.message
    )
    return alert


def _existing(event: AlertEvent) -> Alert | None:
    """The alert that made a raise break a unique constraint: the open one of the rule and charge
    point, or the one of the rule and subject."""
    if event.subject:
        return Alert.objects.filter(rule_name=event.rule.name, subject=event.subject).first()
    return Alert.objects.filter(
        rule_name=event.rule.name, charge_point_slug=event.charge_point, cleared_at__isnull=True
    ).first()


def _clear(alert_id: uuid.UUID, at: datetime | None, rule: CompiledRule, saved: Saved) -> Alert | None:
    with transaction.atomic():
        if not Alert.objects.filter(id=alert_id, cleared_at__isnull=True).update(cleared_at=at):
            return None  # cleared already (the batch is handled again, or another consumer cleared it)
        alert = Alert.objects.get(id=alert_id)
        saved.deliveries += owe(alert, CLEARED, rule.notify_emails, rule.webhook_url)
    logger.info("alert cleared: %s on %s", alert.rule_name, alert.charge_point_slug)
    return alert
