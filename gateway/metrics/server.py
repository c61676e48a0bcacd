"""The workers' own HTTP endpoint: /metrics, /healthz, /readyz (stub: the metrics lane fills it in)."""

from collections.abc import Callable
from typing import Any


class MetricsServer:
    def stop(self) -> None:
        """Stop serving."""


def start_metrics_server(port: int, *, collectors: list, readiness: Callable[[], list[Any]]) -> MetricsServer:
    """Serve on `port` (host EVDASH_METRICS_HOST) from a thread until stop()."""
    return MetricsServer()
