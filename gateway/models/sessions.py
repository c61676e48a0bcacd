"""Charging sessions, derived by the history consumer from status transitions and energy counters."""

from datetime import timedelta

from django.db import models
from django.db.models import F, Q


class SessionEnd(models.TextChoices):
    """Why a session ended (gateway/sessions/derive.py decides)."""

    FINISHED = "finished", "finished"  # charging stopped, the car still plugged in (OCPP Finishing)
    UNPLUGGED = "unplugged", "unplugged"
    UNAVAILABLE = "unavailable", "out of service"
    OFFLINE = "offline", "offline too long"  # or not polled: no record for MAX_SILENCE_S


class Meter(models.TextChoices):
    """Which counter a session's energy comes from: the meter total if the charger has one."""

    NONE = "", "no energy counter"
    TOTAL = "energy_total_wh", "energy meter total"
    SESSION = "session_energy_wh", "the charger's session energy"


class ChargingSession(models.Model):
    """One car's charge at one charge point: from charging (or suspended) to finishing or unplugged.

    Energy is the difference of one counter between the session's first and last record, plus
    what was counted before each counter reset (meter_offset_wh). The meter_* and last_* fields
    are the derivation's state: a consumer that restarts mid-session continues from this row,
    and records at or before (last_ts, last_seq) are not applied twice. The charge point's and
    site's slugs are kept as text, so the sessions outlive both.
    """

    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.SET_NULL, null=True, blank=True, related_name="sessions"
    )
    charge_point_slug = models.SlugField()
    site_slug = models.SlugField(blank=True)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Empty while the session is open.")
    end_reason = models.CharField(max_length=16, choices=SessionEnd, blank=True)
    energy_wh = models.FloatField(default=0.0)
    peak_power_w = models.FloatField(null=True, blank=True)
    # Derivation state (gateway/sessions/derive.py SessionState).
    meter = models.CharField(max_length=24, choices=Meter, blank=True, default=Meter.NONE)
    meter_start_wh = models.FloatField(
        null=True, blank=True, help_text="The counter at the start, or since its last reset."
    )
    meter_last_wh = models.FloatField(null=True, blank=True)
    meter_offset_wh = models.FloatField(default=0.0, help_text="Energy counted before the counter's resets.")
    last_ts = models.DateTimeField(help_text="The last record applied (with last_seq).")
    last_seq = models.BigIntegerField()
    last_online_at = models.DateTimeField(help_text="The last record that was not offline.")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["charge_point_slug"],
                condition=Q(ended_at__isnull=True),
                name="one_open_session_per_charge_point",
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=F("started_at")),
                name="session_ends_after_it_starts",
            ),
        ]
        indexes = [
            models.Index(fields=["charge_point_slug", "-started_at"]),
            models.Index(fields=["site_slug", "-started_at"]),
            models.Index(fields=["-started_at"], name="gateway_session_started_idx"),
        ]

    def __str__(self) -> str:
        state = "open" if self.ended_at is None else f"{self.energy_wh / 1000:.2f} kWh"
        return f"{self.charge_point_slug} from {self.started_at:%Y-%m-%d %H:%M} ({state})"

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def duration(self) -> timedelta:
        """Start to end; an open session's so far (to its last record)."""
        return (self.ended_at or self.last_ts) - self.started_at

    @property
    def energy_kwh(self) -> float:
        return self.energy_wh / 1000.0
