"""/healthz, /readyz and /metrics of the web process.

/healthz and /readyz need no login: load balancers and orchestrators probe them without
credentials. They say nothing secret: /healthz only that the process answers, /readyz which
dependency failed and how ("unreachable: OperationalError"), never hosts or users (the log has
those). /metrics needs EVDASH_METRICS_TOKEN as a bearer token, or a staff login.
"""

import dataclasses
import hmac

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from gateway.api.auth import SCHEME, token_from_header
from gateway.conf import setting
from gateway.health.checks import web_readiness


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process serves requests. No dependency is asked (a database outage must not get
    every web process restarted)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database, the channel layer and Kafka answer; 503 when one does not."""
    checks = await web_readiness()
    ready = all(check.ok for check in checks)
    body = {"ready": ready, "checks": [dataclasses.asdict(check) for check in checks]}
    return JsonResponse(body, status=200 if ready else 503)


def metrics_allowed(request: HttpRequest) -> bool:
    """The configured metrics token as a bearer token, or a staff user's login session."""
    token = setting("METRICS_TOKEN")
    raw = token_from_header(request.META.get("HTTP_AUTHORIZATION", ""))
    if token and raw is not None:
        return hmac.compare_digest(raw.encode(), str(token).encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text: this process's default registry (process, platform, requests, streams)."""
    if not metrics_allowed(request):
        response = HttpResponse("Authentication required: a bearer token or a staff login.\n", status=401)
        response["Content-Type"] = "text/plain; charset=utf-8"
        response["WWW-Authenticate"] = f'{SCHEME} realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
