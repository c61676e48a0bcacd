"""Sites and the charge points installed at them."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

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
    """A place with charge points: a car park, a depot, a street."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    address = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


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
