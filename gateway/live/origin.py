"""Same-origin check for WebSockets: scheme, host and port of the page must be this site's own.

Browsers send cookies with a WebSocket handshake whatever page opened it, and cookies ignore the
port: a page served on another port of the same host, or over https for an http site, would read
the live stream with the user's session. Channels' AllowedHostsOriginValidator compares host names
only, so this validator compares the whole origin (RFC 6454: scheme, host, port) with the origin
of the request itself, or with an origin listed in CSRF_TRUSTED_ORIGINS (behind a proxy that
rewrites the Host header, list the public origin there).
"""

import logging
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """("https", "example.com", 443) from "https://example.com"; None for "null" or anything malformed."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        return None
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The first value of a request header, or None (latin-1, as HTTP headers are)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def _is_secure(scope: dict[str, Any]) -> bool:
    """Whether the browser reached us over TLS: the server's scheme, or the proxy's header Django trusts.

    daphne never sets `scheme` for WebSockets, so behind the TLS-terminating proxy of production
    the answer comes from SECURE_PROXY_SSL_HEADER, exactly as for Django's own request.is_secure().
    """
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        meta_name, secure_value = proxy_header
        header = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        value = _header(scope, header)
        return value is not None and value.split(",")[0].strip() == secure_value
    return False


def request_origin(scope: dict[str, Any]) -> Origin | None:
    """The origin of this request's own site: its scheme and its (allowed) Host header."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, port = split_domain_port(host.lower())
    # The Host header must name this site (DNS rebinding sends the attacker's name in both headers).
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    scheme = "https" if _is_secure(scope) else "http"
    try:
        port_number = int(port) if port else DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return scheme, domain, port_number


def trusted_origins() -> set[Origin]:
    """The explicitly configured origins (CSRF_TRUSTED_ORIGINS, exact entries; wildcards are not honoured)."""
    origins = {parse_origin(value) for value in getattr(settings, "CSRF_TRUSTED_ORIGINS", [])}
    return {origin for origin in origins if origin is not None and "*" not in origin[1]}


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the page that opened this socket is this site (scheme, host and port) or a trusted origin."""
    header = _header(scope, b"origin")
    origin = parse_origin(header) if header is not None else None
    if origin is None:
        # Browsers always send Origin with a WebSocket handshake: a missing or opaque one is refused.
        return False
    return origin == request_origin(scope) or origin in trusted_origins()


class SameOriginValidator:
    """ASGI middleware: refuse the handshake (HTTP 403) unless `origin_allowed`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator only guards WebSocket connections")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        # DEBUG: anyone can knock, and one line per refusal would let them fill the log.
        logger.debug("WebSocket %s refused: origin %r is not this site", scope.get("path"), _header(scope, b"origin"))
        return await WebsocketDenier()(scope, receive, send)
