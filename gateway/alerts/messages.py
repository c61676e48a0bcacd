"""The alert message: published on evdash.alerts (key = charge point), pushed to the pages, POSTed to webhooks.

    {"type": "alert", "schema_version": 1, "event": "raised" | "cleared" | "acknowledged",
     "id": str (uuid), "rule": str (the rule's name), "kind": AlertKind value,
     "severity": "info" | "warning" | "critical", "charge_point": str, "site": str,
     "message": str, "value": number | null, "raised_at": ts, "cleared_at": ts | null,
     "acknowledged_at": ts | null, "acknowledged_by": str | null}

ts: UTC ISO 8601 with milliseconds and a Z, as in the telemetry record. An event-like alert (a
command failed) is raised and cleared at once: it is sent once, as "raised", with cleared_at set.
"""

from datetime import datetime
from typing import Any

from gateway.models import Alert
from gateway.telemetry import format_ts

ALERT_TYPE = "alert"
SCHEMA_VERSION = 1
RAISED = "raised"
CLEARED = "cleared"
ACKNOWLEDGED = "acknowledged"
EVENTS = (RAISED, CLEARED, ACKNOWLEDGED)


def alert_json(alert: Alert, event: str | None = None) -> dict[str, Any]:
    """An alert as its message; `event` defaults to what last happened to it."""
    if event is None:
        event = latest_event(alert)
    elif event not in EVENTS:
        raise ValueError(f"event: {event!r} is not one of {', '.join(EVENTS)}")
    return {
        "type": ALERT_TYPE,
        "schema_version": SCHEMA_VERSION,
        "event": event,
        "id": str(alert.id),
        "rule": alert.rule_name,
        "kind": alert.kind,
        "severity": alert.severity,
        "charge_point": alert.charge_point_slug,
        "site": alert.site_slug,
        "message": alert.message,
        "value": alert.value,
        "raised_at": _ts(alert.raised_at),
        "cleared_at": _ts(alert.cleared_at),
        "acknowledged_at": _ts(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by_name or None,
    }


def latest_event(alert: Alert) -> str:
    """Raised, cleared or acknowledged: whichever happened last (an acknowledgement may come after the clear)."""
    moments = [(alert.raised_at, RAISED)]
    if alert.cleared_at is not None and not alert.subject:  # an event-like alert is only ever "raised"
        moments.append((alert.cleared_at, CLEARED))
    if alert.acknowledged_at is not None:
        moments.append((alert.acknowledged_at, ACKNOWLEDGED))
    return max(moments, key=lambda moment: moment[0])[1]


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else format_ts(moment)
