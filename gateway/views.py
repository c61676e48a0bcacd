"""Dashboard pages: painted from LatestTelemetry on the server, then kept live over WebSockets."""

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_safe

from gateway.choices import Iec61851State, OperatorStatus
from gateway.models import ChargePoint, LatestTelemetry, Site
from gateway.telemetry import Record, format_ts

# A charge point is stale once its last record is older than this many poll intervals, and never
# sooner than STALE_MIN_MS: a fast poller that misses one beat is not yet a problem.
STALE_POLL_INTERVALS = 3
STALE_MIN_MS = 10_000
# How much history the live charts keep: 10 minutes, bounded in points by the page scripts.
CHART_WINDOW_S = 600
# The per-charge-point charts plot every record; this caps their points for fast pollers.
CHART_MAX_POINTS = 3000

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
STATUS_LABELS: dict[str, str] = {
    **{status.value: status.label for status in OperatorStatus},
    STALE: "Stale",
    NO_DATA: "No data",
}


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
    ValueFormat("max_current_a", "Current limit", "A", decimals=0),
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
        return max(STALE_POLL_INTERVALS * self.charge_point.poll_interval_ms, STALE_MIN_MS)

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
        return STALE if self.stale else self.status

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

    def as_json(self) -> dict[str, Any]:
        """What the page script needs of this charge point to take over from the server render."""
        return {
            "slug": self.charge_point.slug,
            "poll_interval_ms": self.charge_point.poll_interval_ms,
            "stale_after_ms": self.stale_after_ms,
            "record": self.record,
        }


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


def page_config(now: datetime, ws_path: str) -> dict[str, Any]:
    """Settings shared by the page scripts of every live page."""
    return {
        "ws_path": ws_path,
        "server_now": format_ts(now),
        "window_s": CHART_WINDOW_S,
        "max_points": CHART_MAX_POINTS,
        "status_labels": STATUS_LABELS,
        "iec61851_labels": dict(Iec61851State.choices),
        "formats": {card.key: {"unit": card.unit, "scale": card.scale, "decimals": card.decimals} for card in CARDS},
    }


# require_safe (GET and HEAD only) sits outside login_required: any other method is a 405 for
# everyone, before the login redirect; the pages change nothing and take no input but ?site=.
@require_safe
@login_required
def fleet(request: HttpRequest) -> HttpResponse:
    """Every enabled charge point as a tile, a fleet summary and the fleet power chart."""
    now = timezone.now()
    sites = Site.objects.filter(charge_points__enabled=True).distinct()
    site = None
    charge_points = ChargePoint.objects.filter(enabled=True).select_related("site", "latest")
    if site_slug := request.GET.get("site"):
        site = get_object_or_404(Site, slug=site_slug)
        charge_points = charge_points.filter(site=site)
    readings = [read_charge_point(cp, now) for cp in charge_points]
    counts = Counter(reading.summary_status for reading in readings)
    total_power_w = sum(reading.values.get("power_w") or 0 for reading in readings if not reading.stale)
    config = page_config(now, "/ws/fleet/") | {
        "charge_points": [reading.as_json() for reading in readings],
    }
    return render(
        request,
        "gateway/fleet.html",
        {
            "sites": sites,
            "site": site,
            "readings": readings,
            "summary": [(status, STATUS_LABELS[status], counts[status]) for status in SUMMARY_ORDER],
            "total_power_kw": POWER.format({"power_w": total_power_w}),
            "config": config,
        },
    )


@require_safe
@login_required
def charge_point(request: HttpRequest, slug: str) -> HttpResponse:
    """One charge point: its identity, status, values and live charts."""
    now = timezone.now()
    cp = get_object_or_404(ChargePoint.objects.select_related("site", "profile", "latest"), slug=slug)
    reading = read_charge_point(cp, now)
    # Enum tables of the profile, so a status code reads "4 (State C2: charging)".
    enums = {name: enum for name, enum in cp.profile.registers.values_list("name", "enum") if enum}
    config = page_config(now, f"/ws/chargepoints/{cp.slug}/") | {
        "charge_point": reading.as_json(),
        "enums": enums,
    }
    return render(
        request,
        "gateway/charge_point.html",
        {
            "cp": cp,
            "reading": reading,
            "extra": [
                (key, with_meaning(format_extra(value), enums.get(key))) for key, value in sorted(reading.extra.items())
            ],
            "config": config,
        },
    )
