"""Readiness checks (stub: the health lane fills it in)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckResult:
    """One dependency as a readiness probe saw it."""

    name: str  # "database", "channel_layer", "kafka", "mqtt", ...
    ok: bool
    detail: str = ""  # why not, or what was seen
    duration_ms: float = 0.0
