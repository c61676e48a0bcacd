"""What the sessions pages, their CSV and any later API read of the charging sessions: the filters,
the totals, the daily energy per site, the CSV rows. Views render these; none keeps a copy.

Days are UTC days (settings.TIME_ZONE), as the stored timestamps are.
"""

import csv
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django import forms
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from gateway.models import ChargingSession
from gateway.models.sessions import SessionEnd
from gateway.telemetry import format_ts

CSV_CHUNK = 2000
CSV_HEADER = (
    "session_id",
    "charge_point",
    "site",
    "started_at",
    "ended_at",
    "duration_s",
    "energy_kwh",
    "peak_power_kw",
    "end_reason",
)
CSV_FIELDS = (
    "id",
    "charge_point_slug",
    "site_slug",
    "started_at",
    "ended_at",
    "last_ts",
    "energy_wh",
    "peak_power_w",
    "end_reason",
)


class SessionFilter(forms.Form):
    """The list's and the CSV's filters: site, charge point, and a range of UTC days (both inclusive)."""

    site = forms.SlugField(required=False)
    charge_point = forms.SlugField(required=False)
    date_from = forms.DateField(required=False, label="From")
    date_to = forms.DateField(required=False, label="To")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("The range ends before it starts.")
        return data

    def sessions(self) -> QuerySet[ChargingSession]:
        """The sessions the (valid) filters select, newest first."""
        data = self.cleaned_data
        sessions = ChargingSession.objects.all()
        if data.get("site"):
            sessions = sessions.filter(site_slug=data["site"])
        if data.get("charge_point"):
            sessions = sessions.filter(charge_point_slug=data["charge_point"])
        if data.get("date_from"):
            sessions = sessions.filter(started_at__gte=day_start(data["date_from"]))
        if data.get("date_to"):
            sessions = sessions.filter(started_at__lt=day_start(data["date_to"]) + timedelta(days=1))
        return sessions

    def query_string(self) -> str:
        """The filters as a query string (for the CSV link and the pages), without empty ones."""
        return urlencode({key: value for key, value in self.data.items() if key in self.fields and value})


def day_start(day: Any) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


DURATION = ExpressionWrapper(Coalesce("ended_at", "last_ts") - F("started_at"), output_field=DurationField())


def totals(sessions: QuerySet[ChargingSession]) -> dict[str, Any]:
    """Count, energy (kWh) and duration of the selected sessions (an open one: so far)."""
    result = sessions.aggregate(count=Count("id"), energy_wh=Sum("energy_wh"), duration=Sum(DURATION))
    duration = result["duration"] or timedelta(0)
    return {
        "count": result["count"],
        "energy_kwh": (result["energy_wh"] or 0.0) / 1000.0,
        "duration": duration,
        "duration_text": format_duration(duration),
    }


def daily_energy(sessions: QuerySet[ChargingSession], site_names: dict[str, str]) -> list[dict[str, Any]]:
    """Energy per site and UTC day (by start), one bar trace per site: [{site, name, days, kwh}]."""
    rows = (
        sessions.order_by()
        .annotate(day=TruncDate("started_at"))
        .values("site_slug", "day")
        .annotate(energy_wh=Sum("energy_wh"))
        .order_by("site_slug", "day")
    )
    traces: dict[str, dict[str, Any]] = {}
    for row in rows:
        slug = row["site_slug"]
        trace = traces.setdefault(
            slug, {"site": slug, "name": site_names.get(slug, slug or "—"), "days": [], "kwh": []}
        )
        trace["days"].append(row["day"].isoformat())
        trace["kwh"].append(round((row["energy_wh"] or 0.0) / 1000.0, 3))
    return list(traces.values())


def format_duration(duration: timedelta) -> str:
    """2 h 05 min, 4 min 10 s, 12 s."""
    seconds = max(int(duration.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {seconds:02d} s"
    return f"{seconds} s"


def session_state(session: ChargingSession) -> str:
    if session.is_open:
        return "open"
    return SessionEnd(session.end_reason).label if session.end_reason else "ended"


class Echo:
    """A file that returns what is written: csv.writer then yields one line at a time."""

    def write(self, value: str) -> str:
        return value


def csv_line(writer: Any, row: tuple) -> str:
    pk, charge_point, site, started_at, ended_at, last_ts, energy_wh, peak_power_w, end_reason = row
    duration_s = ((ended_at or last_ts) - started_at).total_seconds()
    return writer.writerow(
        [
            pk,
            charge_point,
            site,
            format_ts(started_at),
            format_ts(ended_at) if ended_at else "",
            f"{duration_s:.0f}",
            f"{energy_wh / 1000:.3f}",
            "" if peak_power_w is None else f"{peak_power_w / 1000:.2f}",
            end_reason or ("open" if ended_at is None else ""),
        ]
    )


def csv_lines(sessions: QuerySet[ChargingSession]) -> Iterator[str]:
    """The CSV, a line at a time, reading the database in chunks (a WSGI server)."""
    writer = csv.writer(Echo())
    yield writer.writerow(CSV_HEADER)
    for row in sessions.values_list(*CSV_FIELDS).iterator(chunk_size=CSV_CHUNK):
        yield csv_line(writer, row)


async def csv_lines_async(sessions: QuerySet[ChargingSession]) -> AsyncIterator[str]:
    """The same under ASGI (daphne), where Django would read a sync iterator whole before sending a
    byte: chunks of CSV_CHUNK rows, each a query after the last row sent ((started_at, id) order),
    so no cursor or transaction stays open between chunks while the client reads."""
    writer = csv.writer(Echo())
    yield writer.writerow(CSV_HEADER)
    after: tuple[datetime, int] | None = None
    while True:
        chunk = await sync_to_async(csv_chunk)(sessions, after)
        for row in chunk:
            yield csv_line(writer, row)
        if len(chunk) < CSV_CHUNK:
            return
        after = (chunk[-1][3], chunk[-1][0])


def csv_chunk(sessions: QuerySet[ChargingSession], after: tuple[datetime, int] | None) -> list[tuple]:
    """The next CSV_CHUNK sessions after (started_at, id), in that order."""
    if after is not None:
        started_at, pk = after
        sessions = sessions.filter(Q(started_at__gt=started_at) | Q(started_at=started_at, id__gt=pk))
    return list(sessions.order_by("started_at", "id").values_list(*CSV_FIELDS)[:CSV_CHUNK])
