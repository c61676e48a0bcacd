"""The domain rules every reader of telemetry shares: staleness, the status summary and its
order, and how readings and commands are worded.

Views render with them, the alert rules and the session derivation decide with them, and any
later API answers with them: none keeps a copy. The page scripts apply the same rules to live
records: live.js mirrors the formatting, and the fleet page receives the ordering tables from
`fleet_rules()` rather than keeping copies.
"""

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.choices import CommandAction, CommandStatus, FailureReason, Iec61851State, OperatorStatus
from gateway.models import ChargePoint, LatestTelemetry
from gateway.telemetry import Record, parse_ts

# A charge point is stale once its last record is older than this many poll intervals, and never
# sooner than STALE_MIN_MS: a fast poller that misses one beat is not yet a problem.
STALE_POLL_INTERVALS = 3
STALE_MIN_MS = 10_000

NO_DATA = "nodata"
STALE = "stale"
# Order of the fleet summary: what needs attention first after what is working.
SUMMARY_ORDER: tuple[str, ...] = (
    OperatorStatus.CHARGING.value,
    OperatorStatus.PREPARING.value,
    OperatorStatus.SUSPENDED.value,
    OperatorStatus.FINISHING.value,
    OperatorStatus.AVAILABLE.value,
    OperatorStatus.FAULTED.value,
    OperatorStatus.UNAVAILABLE.value,
    OperatorStatus.OFFLINE.value,
    STALE,
    NO_DATA,
)
# Default order of the fleet's charge points: faulted and offline first, then what else needs a
# look (unknown or out of service), then the working ones. Sorting "by status" uses this order.
ATTENTION_ORDER: tuple[str, ...] = (
    OperatorStatus.FAULTED.value,
    OperatorStatus.OFFLINE.value,
    STALE,
    OperatorStatus.UNAVAILABLE.value,
    NO_DATA,
    OperatorStatus.SUSPENDED.value,
    OperatorStatus.PREPARING.value,
    OperatorStatus.FINISHING.value,
    OperatorStatus.CHARGING.value,
    OperatorStatus.AVAILABLE.value,
)
STATUS_LABELS: dict[str, str] = {
    **{status.value: status.label for status in OperatorStatus},
    STALE: "Stale",
    NO_DATA: "No data",
}


def stale_after_ms(poll_interval_ms: int) -> int:
    """How old a charge point's last record may get before its state is no longer known."""
    return max(STALE_POLL_INTERVALS * poll_interval_ms, STALE_MIN_MS)


def is_stale(source_ts: datetime | None, now: datetime, poll_interval_ms: int) -> bool:
    """True once the last record (at source_ts) is older than stale_after_ms; never for no record."""
    if source_ts is None:
        return False
    return (now - source_ts).total_seconds() * 1000 > stale_after_ms(poll_interval_ms)


def summary_bucket(status: str, stale: bool) -> str:
    """The bucket of the fleet summary for a status: a stale record's status is no longer known."""
    return STALE if stale else status


def attention_rank(bucket: str) -> int:
    """Position of a summary bucket in ATTENTION_ORDER; an unknown status sorts just after them."""
    try:
        return ATTENTION_ORDER.index(bucket)
    except ValueError:
        return len(ATTENTION_ORDER)


@dataclass(frozen=True)
class ValueFormat:
    """How a page shows one telemetry value: the browser applies the same rules to live records."""

    key: str
    label: str
    unit: str
    scale: float = 1.0
    decimals: int = 1

    def format(self, values: dict[str, Any]) -> str:
        raw = values.get(self.key)
        if raw is None:
            return "—"
        return f"{raw * self.scale:.{self.decimals}f}"


POWER = ValueFormat("power_w", "Power", "kW", scale=0.001, decimals=1)
SESSION_ENERGY = ValueFormat("session_energy_wh", "Session energy", "kWh", scale=0.001, decimals=2)
CARDS: tuple[ValueFormat, ...] = (
    POWER,
    ValueFormat("energy_total_wh", "Energy total", "kWh", scale=0.001, decimals=1),
    SESSION_ENERGY,
    ValueFormat("temperature_c", "Temperature", "°C", decimals=1),
    ValueFormat("current_limit_a", "Current limit", "A", decimals=0),
)


@dataclass(frozen=True)
class Reading:
    """A charge point and what its latest record says at render time."""

    charge_point: ChargePoint
    record: Record | None
    source_ts: datetime | None
    now: datetime

    @property
    def stale_after_ms(self) -> int:
        return stale_after_ms(self.charge_point.poll_interval_ms)

    @property
    def age_ms(self) -> float | None:
        if self.source_ts is None:
            return None
        return max((self.now - self.source_ts).total_seconds() * 1000, 0.0)

    @property
    def stale(self) -> bool:
        age = self.age_ms
        return age is not None and age > self.stale_after_ms

    @property
    def status(self) -> str:
        return self.record["status"] if self.record else NO_DATA

    @property
    def summary_status(self) -> str:
        """The bucket of the fleet summary: a stale record's status is no longer known."""
        return summary_bucket(self.status, self.stale)

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    @property
    def values(self) -> dict[str, Any]:
        return (self.record or {}).get("values") or {}

    @property
    def extra(self) -> dict[str, Any]:
        return (self.record or {}).get("extra") or {}

    @property
    def power_kw(self) -> str:
        return POWER.format(self.values)

    @property
    def session_kwh(self) -> str:
        return SESSION_ENERGY.format(self.values)

    @property
    def cards(self) -> list[tuple[ValueFormat, str]]:
        return [(card, card.format(self.values)) for card in CARDS]

    @property
    def iec61851_label(self) -> str:
        state = (self.record or {}).get("iec61851_state")
        return Iec61851State(state).label if state in Iec61851State.values else ""

    @property
    def age_text(self) -> str:
        return format_age(self.age_ms)

    @property
    def attention_key(self) -> tuple[int, str, str]:
        """The fleet's default order: attention rank of the bucket, then name (slug breaks ties)."""
        cp = self.charge_point
        return attention_rank(self.summary_status), cp.name.casefold(), cp.slug

    def as_json(self) -> dict[str, Any]:
        """What the page script needs of this charge point to take over from the server render."""
        cp = self.charge_point
        return {
            "slug": cp.slug,
            "name": cp.name,
            "site": cp.site.slug,
            "site_name": cp.site.name,
            "poll_interval_ms": cp.poll_interval_ms,
            "stale_after_ms": self.stale_after_ms,
            "record": self.record,
        }


@dataclass(frozen=True)
class FleetSummary:
    """Counts per summary bucket and the fleet power of the fresh records."""

    counts: Counter[str]
    power_w: float

    @property
    def power_kw(self) -> str:
        return POWER.format({"power_w": self.power_w})

    def rows(self) -> list[tuple[str, str, int]]:
        """(bucket, label, count) in SUMMARY_ORDER, zero counts included."""
        return [(status, STATUS_LABELS[status], self.counts[status]) for status in SUMMARY_ORDER]


def summarize(readings: Iterable[Reading]) -> FleetSummary:
    """The fleet summary: a stale charge point's power is unknown, so it leaves the total."""
    counts: Counter[str] = Counter()
    power_w = 0.0
    for reading in readings:
        counts[reading.summary_status] += 1
        if not reading.stale:
            power_w += reading.values.get("power_w") or 0
    return FleetSummary(counts, power_w)


def fleet_rules() -> dict[str, Any]:
    """The ordering tables the fleet page script applies to live records (no copies in JS)."""
    return {"attention_order": list(ATTENTION_ORDER), "summary_order": list(SUMMARY_ORDER)}


def format_age(age_ms: float | None) -> str:
    """'12 s ago', '3 min ago': the same wording as formatAge() in live.js."""
    if age_ms is None:
        return "never"
    seconds = int(age_ms // 1000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def format_extra(value: Any) -> str:
    """An identity value as text: the same rules as formatExtra() in charge_point.js."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        # JSON keeps no int/float distinction: show 230.0 as the browser does, 230.
        return str(int(value))
    return str(value)


def with_meaning(text: str, enum: dict[str, str] | None) -> str:
    """Append an enum code's meaning: the same rule as withMeaning() in charge_point.js."""
    meaning = (enum or {}).get(text)
    return f"{text} ({meaning})" if meaning else text


def read_charge_point(charge_point: ChargePoint, now: datetime) -> Reading:
    """The reading of a charge point fetched with its latest telemetry (select_related)."""
    latest: LatestTelemetry | None = getattr(charge_point, "latest", None)
    return Reading(
        charge_point=charge_point,
        record=latest.record if latest else None,
        source_ts=latest.source_ts if latest else None,
        now=now,
    )


def format_amperes(value: float | None) -> str:
    """10.0 -> "10", 6.5 -> "6.5", None -> "" (charge_point.js formats the same way)."""
    return "" if value is None else f"{value:g}"


def describe_command(command: dict[str, Any]) -> dict[str, Any]:
    """The wording of one command in the page's list: charge_point.js's describeCommand() mirrors it."""
    action = command["action"]
    if action == CommandAction.SET_CURRENT_LIMIT:
        what = f"Set limit {format_amperes(command['value'])} A"
    else:
        what = CommandAction(action).label if action in CommandAction.values else action
    status = command["status"]
    if status == CommandStatus.APPLIED:
        text = "applied"
        if command.get("read_back") is not None:
            unit = " A" if action == CommandAction.SET_CURRENT_LIMIT else ""
            text += f" — read back {format_amperes(command['read_back'])}{unit}"
    elif status == CommandStatus.FAILED:
        code = command.get("reason_code") or ""
        label = FailureReason(code).label if code in FailureReason.values else code
        text = f"failed — {command.get('reason') or label}"
    else:
        text = "pending"
    return {"command": command, "what": what, "status": status, "status_text": text, "time_text": time_text(command)}


def time_text(command: dict[str, Any]) -> str:
    """When a command was sent, as "14:03:27 UTC" (the server's and the page's clocks are in UTC)."""
    try:
        return parse_ts(command["created_at"]).strftime("%H:%M:%S UTC")
    except (KeyError, TypeError, ValueError):
        return ""
