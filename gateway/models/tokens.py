"""API tokens: per-user bearer tokens for the REST API, stored as hashes and shown once."""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

# "evd_" + 43 URL-safe characters (256 random bits). The prefix lets secret scanners and people
# recognise a leaked evdash token; the first PREFIX_CHARS characters identify it in the admin.
TOKEN_PREFIX = "evd_"  # noqa: S105 (a marker, not a secret)
PREFIX_CHARS = 12


def digest_of(raw: str) -> str:
    """SHA-256 of a token. A plain hash suffices: the token is 256 random bits, not a password."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A user's API token. Only its digest is stored; the token itself is shown once, at creation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'billing export' or 'Grafana'.")
    prefix = models.CharField(max_length=PREFIX_CHARS, editable=False, help_text="Its first characters.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: valid until revoked.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.user})"

    @classmethod
    def issue(cls, user, name: str, *, expires_at=None) -> tuple["ApiToken", str]:
        """Create a token; returns the row and the token, which is never stored or shown again."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=raw[:PREFIX_CHARS], digest=digest_of(raw), expires_at=expires_at
        )
        return token, raw

    @property
    def active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
