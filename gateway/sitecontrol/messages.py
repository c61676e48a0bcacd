"""The site controller's message: what it measured and decided in one period (JSON, keyed by site).

    {"type": "site_status", "schema_version": 1, "site": slug, "at": ts, "poller": str,
     "state": "controlling" | "fallback" | "refused" | "starting",
     "reason": str | null,              # why fallback or refused, in words an operator reads
     "limit_a": number, "limit_kw": number | null, "margin_a": number,
     "draw_a": [l1, l2, l3],            # the site's draw per phase (meter, or chargers + base load)
     "draw_source": "meter" | "estimate" | "fallback",
     "meter_age_s": number | null,      # since the meter's last good reading (null: no meter)
     "base_load_a": [l1, l2, l3],       # the draw that is not the chargers'
     "allocated_a": [l1, l2, l3],       # the allocations in force, summed per phase
     "headroom_a": number,              # limit - draw on the most loaded phase (negative: over)
     "chargers": [
        {"charge_point": slug, "allocated_a": number | null, "actual_a": [l1, l2, l3],
         "state": "charging" | "paused" | "waiting" | "idle" | "offline" | "unresponsive",
         "reason": str, "priority": int, "override_a": number | null, "override_until": ts | null}
     ]}

ts: UTC ISO 8601 with milliseconds and a Z, as in the telemetry record. Phases are the site's
(a single-phase charger on L2 counts on L2). from_json checks the shape and raises InvalidMessage.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.commands.messages import InvalidMessage, _load, _number, _optional_text, _slug, _text, _ts
from gateway.telemetry import format_ts

SITE_STATUS_TYPE = "site_status"
SITE_STATES = ("controlling", "fallback", "refused", "starting")
DRAW_SOURCES = ("meter", "estimate", "fallback")
CHARGER_STATES = ("charging", "paused", "waiting", "idle", "offline", "unresponsive")
Phases = tuple[float, float, float]


@dataclass(frozen=True)
class ChargerShare:
    """One charger's line of a SiteStatus."""

    charge_point: str
    allocated_a: float | None
    actual_a: Phases
    state: str
    reason: str = ""
    priority: int = 0
    override_a: float | None = None
    override_until: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "charge_point": self.charge_point,
            "allocated_a": self.allocated_a,
            "actual_a": list(self.actual_a),
            "state": self.state,
            "reason": self.reason,
            "priority": self.priority,
            "override_a": self.override_a,
            "override_until": None if self.override_until is None else format_ts(self.override_until),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "ChargerShare":
        if not isinstance(data, dict):
            raise InvalidMessage("chargers: each entry must be a JSON object")
        state = data.get("state")
        if state not in CHARGER_STATES:
            raise InvalidMessage(f"chargers.state: {state!r} is not one of {', '.join(CHARGER_STATES)}")
        priority = data.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidMessage(f"chargers.priority: expected a whole number, got {priority!r:.40}")
        return cls(
            charge_point=_slug(data, "charge_point"),
            allocated_a=_number(data, "allocated_a"),
            actual_a=_phases(data, "actual_a"),
            state=state,
            reason=_optional_text(data, "reason") or "",
            priority=priority,
            override_a=_number(data, "override_a"),
            override_until=None if data.get("override_until") is None else _ts(data, "override_until"),
        )


@dataclass(frozen=True)
class SiteStatus:
    """One control period of one site."""

    site: str
    at: datetime
    poller: str
    state: str
    limit_a: float
    draw_a: Phases
    draw_source: str
    base_load_a: Phases
    allocated_a: Phases
    chargers: tuple[ChargerShare, ...] = field(default_factory=tuple)
    reason: str | None = None
    limit_kw: float | None = None
    margin_a: float = 0.0
    meter_age_s: float | None = None

    @property
    def key(self) -> bytes:
        """The Kafka key: one site's statuses stay in order on one partition."""
        return self.site.encode()

    @property
    def headroom_a(self) -> float:
        """The limit less the draw on the most loaded phase (negative: over the limit)."""
        return self.limit_a - max(self.draw_a)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": SITE_STATUS_TYPE,
            "schema_version": 1,
            "site": self.site,
            "at": format_ts(self.at),
            "poller": self.poller,
            "state": self.state,
            "reason": self.reason,
            "limit_a": self.limit_a,
            "limit_kw": self.limit_kw,
            "margin_a": self.margin_a,
            "draw_a": list(self.draw_a),
            "draw_source": self.draw_source,
            "meter_age_s": self.meter_age_s,
            "base_load_a": list(self.base_load_a),
            "allocated_a": list(self.allocated_a),
            "headroom_a": round(self.headroom_a, 3),
            "chargers": [charger.to_dict() for charger in self.chargers],
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, payload: bytes | None) -> "SiteStatus":
        data = _load(payload, SITE_STATUS_TYPE)
        state = data.get("state")
        if state not in SITE_STATES:
            raise InvalidMessage(f"state: {state!r} is not one of {', '.join(SITE_STATES)}")
        source = data.get("draw_source")
        if source not in DRAW_SOURCES:
            raise InvalidMessage(f"draw_source: {source!r} is not one of {', '.join(DRAW_SOURCES)}")
        limit_a = _number(data, "limit_a")
        if limit_a is None:
            raise InvalidMessage("limit_a: a site status needs the limit")
        chargers = data.get("chargers", [])
        if not isinstance(chargers, list):
            raise InvalidMessage("chargers: expected a JSON list")
        return cls(
            site=_slug(data, "site"),
            at=_ts(data, "at"),
            poller=_text(data, "poller", allow_empty=True),
            state=state,
            reason=_optional_text(data, "reason"),
            limit_a=limit_a,
            limit_kw=_number(data, "limit_kw"),
            margin_a=_number(data, "margin_a") or 0.0,
            draw_a=_phases(data, "draw_a"),
            draw_source=source,
            meter_age_s=_number(data, "meter_age_s"),
            base_load_a=_phases(data, "base_load_a"),
            allocated_a=_phases(data, "allocated_a"),
            chargers=tuple(ChargerShare.from_dict(item) for item in chargers),
        )


def _phases(data: dict[str, Any], name: str) -> Phases:
    value = data.get(name)
    if not isinstance(value, list) or len(value) != 3:
        raise InvalidMessage(f"{name}: expected a list of 3 numbers (L1, L2, L3), got {value!r:.80}")
    numbers = [_number({name: item}, name) for item in value]
    if any(number is None for number in numbers):
        raise InvalidMessage(f"{name}: expected 3 numbers, got a null")
    return (numbers[0], numbers[1], numbers[2])  # type: ignore[return-value]
