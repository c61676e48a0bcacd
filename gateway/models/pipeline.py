"""What each running stage of the pipeline last said about itself, for the pipeline-health page."""

from django.db import models


class StageKind(models.TextChoices):
    POLLER = "poller", "Poller"
    BRIDGE = "bridge", "MQTT bridge"
    CONSUMER = "consumer", "Consumer"


class StageStatus(models.Model):
    """One long-running process (a poller, a bridge, a consumer group member), written by itself
    every few seconds. A row whose `seen_at` is old is a process that stopped or hangs; a new
    process on the same host replaces its dead predecessors' rows (gateway/pipeline/reporter.py)."""

    kind = models.CharField(max_length=16, choices=StageKind.choices)
    name = models.CharField(max_length=200, help_text="The poller id, the bridge's client id, the consumer's group.")
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)
    # Counters and latencies as the process measured them (gateway/pipeline/: its own shape per kind).
    stats = models.JSONField(default=dict)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "pipeline stage status"
        verbose_name_plural = "pipeline stage statuses"
        constraints = [models.UniqueConstraint(fields=["kind", "name", "host", "pid"], name="stage_status_per_process")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} on {self.host}"
