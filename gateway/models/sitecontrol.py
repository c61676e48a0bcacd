"""Site load management's records: operators' overrides (their audit), what the controller did
each period (the site page's history) and which poller controls a site."""

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models


class AllocationOverride(models.Model):
    """An operator's allocation for one charger until `expires_at` (e.g. full speed for a fleet vehicle).

    The row is the audit, like a Command: never edited by hand, ended (expired or cancelled) by
    setting `ended_at`, and it outlives its charge point and its user (their names are kept as text).
    The controller still keeps the site within its limit: an override takes its current first, the
    others share what is left.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.SET_NULL, null=True, blank=True, related_name="overrides"
    )
    charge_point_slug = models.SlugField()
    site_slug = models.SlugField()
    current_a = models.FloatField(help_text="The allocation asked for, in A (0 pauses the charger).")
    reason = models.CharField(max_length=300, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="evdash_overrides"
    )
    username = models.CharField(max_length=150)
    via = models.CharField(max_length=16, help_text="Where it came from: web, api or cli.")
    created_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, help_text="When it was cancelled (blank: runs to expiry).")
    ended_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("override_allocation", "Can override a charger's share of the site limit")]
        indexes = [models.Index(fields=["site_slug", "-created_at"])]

    def __str__(self) -> str:
        until = f"{self.expires_at:%Y-%m-%d %H:%M}"
        return f"{self.current_a:g} A for {self.charge_point_slug} until {until} by {self.username}"

    def in_force(self, now: datetime) -> bool:
        return self.ended_at is None and self.created_at <= now < self.expires_at


class SiteSample(models.Model):
    """One control period of one site as its controller published it (a SiteStatus message)."""

    site_slug = models.SlugField()
    at = models.DateTimeField()
    limit_a = models.FloatField(null=True)
    draw_a = models.FloatField(help_text="The most loaded phase's draw, A.")
    allocated_a = models.FloatField(help_text="The most loaded phase's sum of allocations, A.")
    state = models.CharField(max_length=16)
    status = models.JSONField(help_text="The whole SiteStatus message (gateway/sitecontrol/messages.py).")

    class Meta:
        ordering = ["-at"]
        constraints = [models.UniqueConstraint(fields=["site_slug", "at"], name="one_site_sample_per_instant")]
        indexes = [models.Index(fields=["site_slug", "-at"])]

    def __str__(self) -> str:
        return f"{self.site_slug} at {self.at:%H:%M:%S}: {self.draw_a:.1f} A of {self.limit_a} A"


class SiteControlLease(models.Model):
    """Which poller controls a site: taken by the first, renewed every few seconds, refused to a
    second poller while it is fresh (a site split across two pollers would be shared twice)."""

    site = models.OneToOneField("gateway.Site", on_delete=models.CASCADE, primary_key=True, related_name="lease")
    poller_id = models.CharField(max_length=200)
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    renewed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.site_id} controlled by {self.poller_id} on {self.host}"
