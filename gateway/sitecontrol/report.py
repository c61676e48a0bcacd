"""What a site's load management looks like now and over time, read from the SiteSample rows:
the state line, the headroom, staleness, and the chart's points. The site page, the fleet summary
and the API share these rules (views only render).

A site's status is stale when no SiteSample came for 3 control periods + 10 s (the lease's own
freshness, DESIGN12): the controller, its poller or the consumer is gone, and the figures shown
are history, not the site's state.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.models import Site, SiteSample
from gateway.readings import format_age

STALE_PERIODS = 3
# The site page's live chart: the last 10 minutes (as the other live charts), at most this many
# statuses (10 minutes at the shortest period, 1 s); the socket's snapshot is that window.
LIVE_WINDOW_S = 600
LIVE_SAMPLES_MAX = 600
STALE_GRACE_S = 10.0
STATE_LABELS = {
    "controlling": "controlling",
    "fallback": "fallback: failsafe shares",
    "refused": "refused",
    "starting": "starting",
}


def stale_after_s(site: Site) -> float:
    """How old the newest status may be before the page says so."""
    return STALE_PERIODS * site.control_period_s + STALE_GRACE_S


def latest_sample(site_slug: str) -> SiteSample | None:
    return SiteSample.objects.filter(site_slug=site_slug).order_by("-at").first()


@dataclass(frozen=True)
class SiteControlReading:
    """One site's load management as of its newest SiteSample (None: never controlled yet)."""

    site: Site
    sample: SiteSample | None
    age_s: float | None
    stale: bool

    @property
    def status(self) -> dict[str, Any] | None:
        return self.sample.status if self.sample is not None else None

    @property
    def headroom_a(self) -> float | None:
        status = self.status
        if status is None:
            return None
        if status.get("headroom_a") is not None:
            return float(status["headroom_a"])
        return float(status["limit_a"]) - max(status["draw_a"])

    @property
    def state(self) -> str:
        """controlling, fallback, refused or starting; "stale" or "none" when there is nothing current."""
        if self.sample is None:
            return "none"
        return "stale" if self.stale else self.sample.state

    def summary_text(self) -> str:
        """The fleet's line: "63 A limit · 12.4 A headroom", or why there is no headroom to show."""
        limit = f"{self.site.limit_a:g} A limit"
        if self.sample is None:
            return f"{limit} · no status yet"
        if self.stale:
            return f"{limit} · no status for {format_age(self.age_s * 1000).removesuffix(' ago')}"
        if self.sample.state == "refused":
            return f"{limit} · refused"
        return f"{limit} · {self.headroom_a:.1f} A headroom"

    def state_text(self) -> str:
        """The site page's state line: "controlling", "fallback: …: <reason>", "refused: <reason>"."""
        if self.sample is None:
            return "no status from the controller yet"
        status = self.sample.status
        text = STATE_LABELS.get(self.sample.state, self.sample.state)
        if status.get("reason"):
            text = f"{text}: {status['reason']}"
        if self.stale:
            text = f"no status for {format_age(self.age_s * 1000).removesuffix(' ago')} (last: {text})"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "site": self.site.slug,
            "name": self.site.name,
            "limit_a": self.site.limit_a,
            "state": self.state,
            "stale": self.stale,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "stale_after_s": stale_after_s(self.site),
            "headroom_a": self.headroom_a,
            "summary": self.summary_text(),
            "at": self.status["at"] if self.status else None,
        }


def read_site_control(site: Site, now: datetime, sample: SiteSample | None = None) -> SiteControlReading:
    """The site's reading at `now` from its newest sample (pass it when already read)."""
    sample = sample if sample is not None else latest_sample(site.slug)
    if sample is None:
        return SiteControlReading(site, None, None, False)
    age_s = max((now - sample.at).total_seconds(), 0.0)
    return SiteControlReading(site, sample, age_s, age_s > stale_after_s(site))


def load_managed_readings(now: datetime, sites: list[Site] | None = None) -> list[SiteControlReading]:
    """Every load-managed site's reading (of `sites`, else all), by name: the fleet summary's lines."""
    managed = [site for site in (sites or Site.objects.all()) if site.load_managed]
    return [read_site_control(site, now) for site in sorted(managed, key=lambda site: site.name)]


def statuses_between(site_slug: str, start: datetime, end: datetime, max_points: int) -> list[dict[str, Any]]:
    """The statuses from start to end, oldest first, at most `max_points`: over that, the most loaded
    status of each of `max_points` equal slices (an overshoot must not fall between two points).

    Reads the narrow columns first and the statuses (the JSON) of the chosen rows only: a day at a
    5 s period is 17,280 rows.
    """
    rows = list(
        SiteSample.objects.filter(site_slug=site_slug, at__gte=start, at__lte=end)
        .order_by("at")
        .values_list("id", "draw_a")
    )
    chosen = [row_id for row_id, _ in rows] if len(rows) <= max_points else most_loaded(rows, max_points)
    statuses = dict(SiteSample.objects.filter(id__in=chosen).values_list("id", "status"))
    return [statuses[row_id] for row_id in chosen if row_id in statuses]


def most_loaded(rows: list[tuple[int, float]], slices: int) -> list[int]:
    """The id of the highest draw in each of `slices` consecutive, equal slices of `rows` (in order)."""
    size = len(rows) / slices
    chosen = []
    for index in range(slices):
        part = rows[int(index * size) : int((index + 1) * size)]
        if part:
            chosen.append(max(part, key=lambda row: row[1])[0])
    return chosen


def recent_statuses(site_slug: str, window_s: float, now: datetime, max_samples: int) -> list[dict[str, Any]]:
    """The statuses of the last `window_s` seconds, oldest first, at most the newest `max_samples`."""
    rows = (
        SiteSample.objects.filter(site_slug=site_slug, at__gte=now - timedelta(seconds=window_s))
        .order_by("-at")
        .values_list("status", flat=True)[:max_samples]
    )
    return list(reversed(rows))


def live_statuses(site_slug: str, now: datetime) -> list[dict[str, Any]]:
    """The site socket's snapshot: the statuses of the live chart's window, oldest first."""
    return recent_statuses(site_slug, LIVE_WINDOW_S, now, LIVE_SAMPLES_MAX)


def chart_point(status: dict[str, Any]) -> dict[str, Any]:
    """What the chart draws of one status (site.js pointOf() does the same for live frames).

    Per charger its actual current on its most loaded phase and its allocation; the site's limit and
    its draw on the most loaded phase.
    """
    return {
        "at": status["at"],
        "state": status.get("state"),
        "limit_a": status.get("limit_a"),
        "draw_a": max(status.get("draw_a") or [0.0]),
        "chargers": {
            charger["charge_point"]: [max(charger.get("actual_a") or [0.0]), charger.get("allocated_a")]
            for charger in status.get("chargers", [])
        },
    }
