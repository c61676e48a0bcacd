"""The latest telemetry of each charge point, kept by the consumer for pages' first paint."""

from django.db import models


class LatestTelemetry(models.Model):
    """Last record the consumer handled for a charge point (the live stream carries the rest)."""

    charge_point = models.OneToOneField(
        "gateway.ChargePoint", on_delete=models.CASCADE, primary_key=True, related_name="latest"
    )
    record = models.JSONField()
    source_ts = models.DateTimeField()
    received_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "latest telemetry"

    def __str__(self) -> str:
        return f"{self.charge_point_id} @ {self.source_ts.isoformat()}"
