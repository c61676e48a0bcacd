"""Alert rules (built-in and defined in the admin) and the alerts they raise, one per episode."""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from gateway.choices import AlertKind, AlertSeverity, Comparator, DeliveryChannel, DeliveryStatus


class AlertRule(models.Model):
    """A condition watched on the live telemetry of the charge points in its scope.

    Built-in kinds (faulted, offline, stale, temperature, command failed) are rows too, created by
    a data migration, so that the admin sets their threshold, severity and notifications like any
    other; a `threshold` rule compares one telemetry value with a threshold. Scope: one charge
    point, one site, or (neither) every charge point.
    """

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=32, choices=AlertKind, default=AlertKind.THRESHOLD)
    enabled = models.BooleanField(default=True)
    severity = models.CharField(max_length=16, choices=AlertSeverity, default=AlertSeverity.WARNING)
    # Threshold rules: `value` `comparator` `threshold`, e.g. temperature_c > 70. The temperature
    # built-in uses `threshold` (°C); offline uses `hold_s` (seconds offline before it raises).
    value = models.CharField(max_length=32, blank=True, help_text="A telemetry value, e.g. power_w.")
    comparator = models.CharField(max_length=2, choices=Comparator, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    hold_s = models.FloatField(default=0, help_text="How long the condition must hold before it raises, s.")
    hysteresis = models.FloatField(
        default=0, help_text="How far back past the threshold the value must go before the alert clears."
    )
    site = models.ForeignKey("gateway.Site", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    notify_emails = models.TextField(blank=True, help_text="Addresses to e-mail, one per line or comma-separated.")
    webhook_url = models.URLField(blank=True, help_text="POSTed the alert as JSON when it is raised and cleared.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == AlertKind.THRESHOLD:
            missing = [name for name in ("value", "comparator") if not getattr(self, name)]
            if self.threshold is None:
                missing.append("threshold")
            if missing:
                raise ValidationError({name: "A threshold rule needs this." for name in missing})
        if self.site_id and self.charge_point_id:
            raise ValidationError("Scope a rule to a site or to a charge point, not both.")
        if self.hold_s < 0 or self.hysteresis < 0:
            raise ValidationError("Hold time and hysteresis cannot be negative.")


class Alert(models.Model):
    """One episode of a rule on one charge point: raised, then cleared; acknowledged by an operator.

    At most one alert per rule and charge point is open (not cleared) at a time: a condition that
    holds raises once, however many records repeat it, and a consumer that restarts finds the
    open alert instead of raising it again. The rule's name and the charge point's slug are kept
    as text, so the history outlives both.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    rule = models.ForeignKey(AlertRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts")
    rule_name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=AlertKind)
    severity = models.CharField(max_length=16, choices=AlertSeverity)
    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts"
    )
    charge_point_slug = models.SlugField()
    site_slug = models.SlugField(blank=True)
    message = models.TextField()
    value = models.FloatField(null=True, blank=True, help_text="The value that raised it, if any.")
    # What an event-like alert is about, e.g. the failed command's id: such an alert is raised and
    # cleared at once, and never twice for the same subject.
    subject = models.CharField(max_length=64, blank=True)
    raised_at = models.DateTimeField(db_index=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    acknowledged_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-raised_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule_name", "charge_point_slug"],
                condition=Q(cleared_at__isnull=True),
                name="one_open_alert_per_rule_and_charge_point",
            ),
            models.UniqueConstraint(
                fields=["rule_name", "subject"], condition=~Q(subject=""), name="one_alert_per_rule_and_subject"
            ),
        ]
        indexes = [models.Index(fields=["charge_point_slug", "-raised_at"])]

    def __str__(self) -> str:
        state = "cleared" if self.cleared_at else "active"
        return f"{self.rule_name} on {self.charge_point_slug} ({state})"

    @property
    def active(self) -> bool:
        return self.cleared_at is None


class AlertDelivery(models.Model):
    """A delivery an alert event owes (the outbox of gateway/alerts/notify.py): written in the same
    transaction as the event, marked done once delivered, or given up after its attempts.

    The message is kept as it was at the event (a raise delivered after the clear still says raised).
    """

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16)  # raised, cleared or acknowledged
    channel = models.CharField(max_length=16, choices=DeliveryChannel)
    target = models.TextField(blank=True)  # the webhook's URL, or the e-mail addresses one per line
    message = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)  # failed ones, across restarts
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["id"], condition=Q(status=DeliveryStatus.PENDING), name="alert_delivery_pending")
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.channel} of {self.alert_id} ({self.status})"
