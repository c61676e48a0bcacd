"""Rate limiting per API token (per user for browser sessions), from EVDASH_API_RATE_LIMIT."""

from rest_framework.throttling import SimpleRateThrottle

from gateway.conf import setting
from gateway.models import ApiToken


class TokenRateThrottle(SimpleRateThrottle):
    """Each token has its own budget, so one busy integration cannot starve another of its user's."""

    scope = "token"

    def get_rate(self) -> str:
        return setting("API_RATE_LIMIT")

    def get_cache_key(self, request, view) -> str | None:
        if isinstance(request.auth, ApiToken):
            ident = f"token-{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            return None  # refused by authentication anyway
        return self.cache_format % {"scope": self.scope, "ident": ident}
