"""Operator commands and their audit: every command ever sent, who sent it and what came of it."""

import uuid

from django.conf import settings
from django.db import models

from gateway.choices import CommandAction, CommandStatus, FailureReason


class Command(models.Model):
    """One command to one charge point: created pending, completed by the poller's result.

    The row is the audit: it is never edited by hand (the admin shows it read-only) and outlives
    its charge point and its user (their slug and name are kept as text).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    charge_point = models.ForeignKey(
        "gateway.ChargePoint", on_delete=models.SET_NULL, null=True, blank=True, related_name="commands"
    )
    charge_point_slug = models.SlugField(help_text="The charge point's slug when the command was sent.")
    site_slug = models.SlugField(blank=True)
    action = models.CharField(max_length=32, choices=CommandAction)
    value = models.FloatField(null=True, blank=True, help_text="The limit asked for, in A (set_current_limit).")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="evdash_commands"
    )
    username = models.CharField(max_length=150, help_text="Who sent it (a user, or cli:<login> for manage.py).")
    via = models.CharField(max_length=16, help_text="Where it came from: web, cli or api.")
    created_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=CommandStatus, default=CommandStatus.PENDING, db_index=True)
    reason_code = models.CharField(max_length=32, choices=FailureReason, blank=True)
    reason = models.TextField(blank=True)
    read_back = models.FloatField(null=True, blank=True, help_text="What the charger showed after the write.")
    poller = models.CharField(max_length=200, blank=True, help_text="The poller that executed it.")
    completed_at = models.DateTimeField(null=True, blank=True, help_text="When the poller had the result.")
    received_at = models.DateTimeField(null=True, blank=True, help_text="When the result reached the server.")
    latency_ms = models.FloatField(null=True, blank=True, help_text="From creation to the result at the server.")

    class Meta:
        ordering = ["-created_at"]
        permissions = [("send_command", "Can send commands (current limit, pause, resume) to charge points")]
        indexes = [models.Index(fields=["charge_point_slug", "-created_at"])]

    def __str__(self) -> str:
        value = "" if self.value is None else f" {self.value:g} A"
        return f"{self.action}{value} to {self.charge_point_slug} by {self.username}: {self.status}"
