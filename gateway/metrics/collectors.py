"""Collectors per kind of process (stub: the metrics lane fills it in)."""

from typing import Any


def collectors_for(observed: Any) -> list:
    """The collectors that expose `observed`'s counters at scrape time."""
    return []
