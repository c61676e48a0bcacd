"""Readiness of the workers (stub: the health lane fills it in)."""

from collections.abc import Callable
from typing import Any

from gateway.health.checks import CheckResult


def readiness_for(observed: Any) -> Callable[[], list[CheckResult]]:
    """A readiness probe for `observed`, called from the metrics server's thread."""
    return lambda: []
