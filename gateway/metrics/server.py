"""The workers' own HTTP endpoint (--metrics-port): /metrics, /healthz, /readyz from a daemon thread.

    /metrics  Prometheus text (or OpenMetrics, by the Accept header) of this process's collectors
              plus the process/platform/GC collectors. With EVDASH_METRICS_TOKEN set it needs
              `Authorization: Bearer <token>` (401 otherwise); without it, keep the port private
              (EVDASH_METRICS_HOST, 127.0.0.1 by default).
    /healthz  liveness: 200 while the process serves at all. No token: probes carry none.
    /readyz   readiness: 200 or 503 with the checks as JSON. No token either.

A ThreadingWSGIServer (prometheus_client's) answers each request on a thread of its own, so a slow
readiness check never holds up a scrape, and nothing here touches the event loop: the collectors
and the readiness probe read counters and flags the parts keep.
"""

import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any
from wsgiref.simple_server import make_server

from django.db import connections
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector

from gateway.conf import setting
from gateway.health.checks import CheckResult

logger = logging.getLogger(__name__)

Readiness = Callable[[], list[CheckResult]]
StartResponse = Callable[..., Any]
JSON = "application/json"


def build_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    """A registry of its own (not the global one): this process's collectors and its resource use."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def readiness_body(results: list[CheckResult]) -> tuple[bool, bytes]:
    """(ready, the JSON body) of a readiness probe's results: ready when every check is ok."""
    ready = all(result.ok for result in results)
    body = {"ready": ready, "checks": [asdict(result) for result in results]}  # as the web process's /readyz
    return ready, json.dumps(body).encode()


class MetricsApp:
    """The WSGI application: routes, the bearer token on /metrics, readiness as JSON."""

    def __init__(self, registry: CollectorRegistry, readiness: Readiness, token: str = "") -> None:
        self.metrics = make_wsgi_app(registry)
        self.readiness = readiness
        self.token = token.encode()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET":
            return self._answer(start_response, "405 Method Not Allowed", b"", [("Allow", "GET")])
        if path == "/metrics":
            if not self._authorized(environ):
                return self._answer(
                    start_response,
                    "401 Unauthorized",
                    b"a bearer token is required\n",
                    [("WWW-Authenticate", "Bearer")],
                )
            return self.metrics(environ, start_response)
        if path == "/healthz":
            return self._answer(start_response, "200 OK", b'{"status": "ok"}', content_type=JSON)
        if path == "/readyz":
            ready, body = self._ready()
            return self._answer(
                start_response, "200 OK" if ready else "503 Service Unavailable", body, content_type=JSON
            )
        return self._answer(start_response, "404 Not Found", b"not found: try /metrics, /healthz or /readyz\n")

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if not self.token:
            return True
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)

    def _ready(self) -> tuple[bool, bytes]:
        try:
            return readiness_body(self.readiness())
        except Exception as exc:  # a broken probe means not ready, said in the answer and the log
            logger.exception("the readiness probe failed")
            return False, json.dumps({"ready": False, "checks": [], "error": f"{type(exc).__name__}: {exc}"}).encode()
        finally:
            # A check that used the database did so on this request's thread, which ends now.
            connections.close_all()

    @staticmethod
    def _answer(
        start_response: StartResponse,
        status: str,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        *,
        content_type: str = "text/plain; charset=utf-8",
    ) -> list[bytes]:
        start_response(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
            + (headers or []),
        )
        return [body]


class MetricsServer:
    """A running endpoint: `port` is the one bound (useful with port 0); stop() ends it."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self.httpd = httpd
        self.thread = thread
        self.host: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    def stop(self) -> None:
        """Stop serving and close the socket (a request in progress finishes on its own thread)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def start_metrics_server(port: int, *, collectors: list, readiness: Readiness) -> MetricsServer:
    """Serve on `port` (host EVDASH_METRICS_HOST) from a daemon thread until stop()."""
    host = setting("METRICS_HOST")
    app = MetricsApp(build_registry(collectors), readiness, setting("METRICS_TOKEN"))

    class Server(ThreadingWSGIServer):
        """ThreadingWSGIServer on the address family of the host (an IPv6 address works too)."""

    family, _type, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    httpd = make_server(address[0], port, app, Server, handler_class=_SilentHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics", daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    logger.info(
        "metrics on http://%s:%d/metrics (%s), /healthz, /readyz",
        server.host,
        server.port,
        "bearer token required" if app.token else "no token",
    )
    return server
