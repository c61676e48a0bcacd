"""Product settings with their documented defaults (settings.EVDASH, read from the environment)."""

from typing import Any

from django.conf import settings


def setting(name: str) -> Any:
    """One evdash knob, e.g. setting("TELEMETRY_TOPIC")."""
    return settings.EVDASH[name]
