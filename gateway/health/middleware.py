"""Request metrics of the web process: count and duration by route template, method and status.

Cheap by construction: one monotonic clock read before and after, one counter increment and one
histogram observation per request. Labels are bounded: the route is the URL pattern that matched
("api/v1/charge-points/<slug:slug>/"), never the path, so 5,000 charge points make one series; a
request no pattern matched (a 404, a static file) is "<unmatched>".
"""

import time
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from prometheus_client import Counter, Histogram

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Buckets for web requests, 2.5 ms to 10 s: the API's p50 is milliseconds, a day of history ~0.25 s.
BUCKETS_S = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

requests_total = Counter(
    "evdash_http_requests",
    "HTTP requests answered by the web process, by URL pattern, method and status.",
    ["route", "method", "status"],
)
request_duration = Histogram(
    "evdash_http_request_duration_seconds",
    "Time to the response's headers (for a stream: to its start), by URL pattern.",
    ["route"],
    buckets=BUCKETS_S,
)


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else UNMATCHED


def observe(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    route = route_of(request)
    method = request.method if request.method in METHODS else "other"
    requests_total.labels(route, method, str(response.status_code)).inc()
    request_duration.labels(route).observe(time.monotonic() - started)


class RequestMetricsMiddleware:
    """Counts and times every request; async-capable, so async views (readyz, the stream) stay async."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        started = time.monotonic()
        response = self.get_response(request)
        observe(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        started = time.monotonic()
        response = await self.get_response(request)
        observe(request, response, started)
        return response
