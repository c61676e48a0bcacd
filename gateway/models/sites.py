"""Sites and the charge points installed at them."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


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

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}/{self.unit_id}"
