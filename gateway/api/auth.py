"""Bearer-token authentication for the API (and the stream), against hashed ApiToken rows."""

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from gateway.models import ApiToken
from gateway.models.tokens import digest_of

# last_used_at is written at most this often per token: a busy integration is not a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
SCHEME = "Bearer"


def token_from_header(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for any other scheme."""
    scheme, _, raw = header.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        return None
    return raw.strip() or None


def authenticate_token(raw: str) -> ApiToken:
    """The active token for a raw token, with its user; raises AuthenticationFailed otherwise.

    The one place a token is checked: the API views and the stream both use it.
    """
    try:
        token = ApiToken.objects.select_related("user").get(digest=digest_of(raw))
    except ApiToken.DoesNotExist:
        raise exceptions.AuthenticationFailed("Invalid token.") from None
    if not token.active:
        raise exceptions.AuthenticationFailed("Token revoked or expired.")
    if not token.user.is_active:
        raise exceptions.AuthenticationFailed("User inactive.")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer evd_...`; request.auth is the ApiToken (the throttle keys on it)."""

    def authenticate(self, request):
        raw = token_from_header(request.META.get("HTTP_AUTHORIZATION", ""))
        if raw is None:
            return None
        token = authenticate_token(raw)
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) without credentials, with the scheme to use.
        return f'{SCHEME} realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The schema's security scheme for ApiTokenAuthentication: Swagger UI's "Authorize" takes a token."""

    target_class = ApiTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from the admin (API tokens): `Authorization: Bearer evd_...`.",
        }
