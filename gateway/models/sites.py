"""Sites and the charge points installed at them."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from gateway.choices import Wiring
from gateway.modbus.pacing import (
    Pacing,
    PollTime,
    effective_pacing,
    fitting_interval_ms,
    interval_problem,
    poll_time,
    write_gap_problem,
)
from gateway.profiles.spec import MAX_PACING_GAP_MS, ProfileSpec
from gateway.profiles.store import load_spec


class Site(models.Model):
    """A place with charge points: a car park, a depot, a street.

    With a connection limit, the poller that owns the site shares it among the site's chargers
    (site load management, gateway/sitecontrol/); without one, nothing is controlled.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    address = models.CharField(max_length=300, blank=True)

    # Site load management (README, "Site load management").
    limit_a = models.FloatField(
        "connection limit (A per phase)",
        null=True,
        blank=True,
        validators=[
            MinValueValidator(6.0, "At least 6 A per phase."),
            MaxValueValidator(10_000.0, "At most 10,000 A."),
        ],
        help_text="The grid connection's limit per phase. Blank: no load management at this site.",
    )
    limit_kw = models.FloatField(
        "connection limit (kW)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1.0, "At least 1 kW."), MaxValueValidator(10_000.0, "At most 10,000 kW.")],
        help_text="Optional: a limit on total active power as well (a grid operator's curtailment).",
    )
    control_period_s = models.FloatField(
        "control period (s)",
        default=5.0,
        validators=[MinValueValidator(1.0, "At least 1 s."), MaxValueValidator(60.0, "At most 60 s.")],
        help_text="How often the controller re-shares the limit. A load above the limit is acted on at once.",
    )
    base_load_a = models.FloatField(
        "base load (A per phase)",
        default=0.0,
        validators=[MinValueValidator(0.0, "Cannot be negative.")],
        help_text="The site's own load besides the chargers. Without a meter the controller assumes it always; "
        "with one, while the meter is stale.",
    )
    margin_a = models.FloatField(
        "safety margin (A per phase)",
        default=1.0,
        validators=[MinValueValidator(0.0, "Cannot be negative.")],
        help_text="Kept free below the limit, for measurement noise and the cars' own tolerance.",
    )
    failsafe_current_a = models.FloatField(
        "failsafe current per charger (A)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0, "Cannot be negative.")],
        help_text="What each charger falls back to when the controller, the poller or the meter dies. "
        "Blank: worked out from the limit (README, the failsafe arithmetic).",
    )
    failsafe_timeout_s = models.PositiveIntegerField(
        "failsafe timeout (s)",
        default=30,
        validators=[MinValueValidator(10, "At least 10 s (ABB's minimum)."), MaxValueValidator(3600, "At most 1 h.")],
        help_text="How long a charger waits without the poller's watchdog before it falls back.",
    )
    meter_profile = models.ForeignKey(
        "gateway.DeviceProfile",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="metered_sites",
        help_text="The site meter's register map (e.g. Eastron SDM630). Blank: no meter; the draw is the "
        "chargers' sum plus the base load.",
    )
    meter_host = models.CharField(max_length=253, blank=True)
    meter_port = models.PositiveIntegerField(
        default=502,
        validators=[
            MinValueValidator(1, "Port must be between 1 and 65535."),
            MaxValueValidator(65535, "Port must be between 1 and 65535."),
        ],
    )
    meter_unit_id = models.PositiveSmallIntegerField(
        "meter Modbus unit id",
        default=1,
        validators=[MaxValueValidator(255, "Modbus unit id must be between 0 and 255.")],
    )
    meter_stale_s = models.FloatField(
        "meter stale after (s)",
        default=10.0,
        validators=[MinValueValidator(2.0, "At least 2 s."), MaxValueValidator(600.0, "At most 600 s.")],
        help_text="A meter not read for this long is stale: the controller falls back to the failsafe share.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def load_managed(self) -> bool:
        return self.limit_a is not None

    def clean(self) -> None:
        super().clean()
        if self.meter_profile_id is not None and not self.meter_host:
            raise ValidationError({"meter_host": "A meter needs a host."})
        if self.meter_host and self.meter_profile_id is None:
            raise ValidationError({"meter_profile": "Choose the meter's profile."})
        if self.limit_a is not None and self.base_load_a + self.margin_a >= self.limit_a:
            raise ValidationError({"base_load_a": "The base load and the margin leave nothing of the limit to share."})


class ChargePoint(models.Model):
    """One charge point reachable over Modbus TCP, read through its device profile."""

    slug = models.SlugField(unique=True, help_text="Stable id: the Kafka message key and the dashboard URL.")
    name = models.CharField(max_length=200)
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="charge_points")
    host = models.CharField(max_length=253, help_text="IP address or DNS name of the charger.")
    port = models.PositiveIntegerField(
        default=502,
        validators=[
            MinValueValidator(1, "Port must be between 1 and 65535."),
            MaxValueValidator(65535, "Port must be between 1 and 65535."),
        ],
    )
    unit_id = models.PositiveSmallIntegerField(
        "Modbus unit id",
        default=1,
        # 1-247 address serial devices behind gateways; 255 (0xFF) is what most Modbus TCP
        # chargers answer to (KEBA, Webasto, Vestel, ...), per the Modbus TCP implementation guide.
        validators=[MaxValueValidator(255, "Modbus unit id must be between 0 and 255.")],
    )
    profile = models.ForeignKey("gateway.DeviceProfile", on_delete=models.PROTECT, related_name="charge_points")
    poll_interval_ms = models.PositiveIntegerField(
        default=1000,
        validators=[
            MinValueValidator(200, "Poll interval must be at least 200 ms."),
            MaxValueValidator(3_600_000, "Poll interval must be at most one hour."),
        ],
    )
    request_gap_ms = models.PositiveIntegerField(
        "gap between requests (ms)",
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_PACING_GAP_MS, f"At most {MAX_PACING_GAP_MS} ms.")],
        help_text="Blank: the profile's vendor pacing (KEBA asks for 500 ms). Relax it only for a box you "
        "know copes: 0 sends requests back to back, as evcc reads a KEBA.",
    )
    write_gap_ms = models.PositiveIntegerField(
        "gap between writes (ms)",
        null=True,
        blank=True,
        validators=[MaxValueValidator(MAX_PACING_GAP_MS, f"At most {MAX_PACING_GAP_MS} ms.")],
        help_text="Blank: the profile's vendor pacing (KEBA asks for 5000 ms). 0: writes back to back.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled charge points are not polled.")
    # Site load management: how this charger shares the site's limit.
    priority = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(100, "At most 100.")],
        help_text="When the site is short, higher priorities keep charging and the lowest pause first.",
    )
    min_session_current_a = models.FloatField(
        "per-session minimum (A)",
        null=True,
        blank=True,
        validators=[MinValueValidator(6.0, "At least 6 A (IEC 61851)."), MaxValueValidator(80.0, "At most 80 A.")],
        help_text="Optional: a session here gets at least this, or pauses (instead of the charger's minimum).",
    )
    max_current_a = models.FloatField(
        "installation maximum (A)",
        null=True,
        blank=True,
        validators=[MinValueValidator(6.0, "At least 6 A."), MaxValueValidator(80.0, "At most 80 A.")],
        help_text="The circuit's rating, if below what the charger takes. Blank: the profile's maximum.",
    )
    wiring = models.CharField(max_length=8, choices=Wiring, default=Wiring.THREE_PHASE)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["site__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["host", "port", "unit_id"],
                name="unique_modbus_endpoint",
                violation_error_message="Another charge point already uses this host, port and unit id.",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    def clean(self) -> None:
        super().clean()
        if self.host and any(ch.isspace() for ch in self.host):
            raise ValidationError({"host": "Host must not contain spaces."})
        spec = self.profile_spec()
        if spec is not None:
            problem = write_gap_problem(spec, self.effective_pacing(spec))
            if problem:
                raise ValidationError({"write_gap_ms": f"The profile's {problem}."})
        problem = self.pacing_problem()
        if problem and self.enabled:  # a disabled charge point is not polled: it can always be saved
            raise ValidationError({"poll_interval_ms": problem})

    def pacing_problem(self) -> str | None:
        """Why the poll interval cannot fit one poll at this charge point's pacing (None if it fits)."""
        spec = self.profile_spec()
        if spec is None or self.poll_interval_ms is None:
            return None
        return interval_problem(spec, self.effective_pacing(spec), self.poll_interval_ms)

    def poll_time(self) -> PollTime | None:
        """How long one poll takes at this charge point's pacing (None while no profile is chosen)."""
        spec = self.profile_spec()
        if spec is None:
            return None
        return poll_time(spec, self.effective_pacing(spec), self.poll_interval_ms)

    def fitting_poll_interval_ms(self) -> int:
        """The poll interval, lengthened if a poll at this pacing cannot fit it (the demo's KEBA)."""
        spec = self.profile_spec()
        if spec is None:
            return self.poll_interval_ms
        return fitting_interval_ms(spec, self.effective_pacing(spec), self.poll_interval_ms)

    def effective_pacing(self, spec: ProfileSpec) -> Pacing:
        """The pacing the poller uses: the profile's, with this charge point's overrides."""
        return effective_pacing(spec, self.request_gap_ms, self.write_gap_ms)

    def profile_spec(self) -> ProfileSpec | None:
        """The profile as the poller sees it, or None while no profile is chosen."""
        if self.profile_id is None:
            return None
        return load_spec(self.profile)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}/{self.unit_id}"
