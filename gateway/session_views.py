"""Charging sessions pages: the list (filters, totals, daily energy per site), its CSV, one session's power curve.

The sessions come from gateway/sessions (the history consumer derives them); what is read of them
(filters, totals, daily energy, CSV rows) is gateway/sessions/report.py. These views render.
"""

from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_safe

from gateway.history.query import charge_point_series
from gateway.models import ChargePoint, ChargingSession, Site
from gateway.sessions.report import (
    SessionFilter,
    csv_lines,
    csv_lines_async,
    daily_energy,
    format_duration,
    session_state,
    totals,
)
from gateway.telemetry import format_ts

PAGE_SIZE = 50
# The detail page's power curve shows a little before and after the session.
CURVE_MARGIN = timedelta(seconds=30)
CURVE_MAX_POINTS = 1500


@require_safe
@login_required
def sessions(request: HttpRequest) -> HttpResponse:
    """The sessions list: filters, totals, daily energy per site, the selected sessions paginated."""
    form = SessionFilter(request.GET)
    sites = list(Site.objects.all())
    site_names = {site.slug: site.name for site in sites}
    context: dict[str, Any] = {"form": form, "sites": sites, "charge_points": ChargePoint.objects.order_by("slug")}
    if not form.is_valid():
        return render(request, "gateway/sessions.html", context | {"page": None}, status=400)
    selected = form.sessions()
    page = Paginator(selected.select_related("charge_point"), PAGE_SIZE).get_page(request.GET.get("page"))
    query = form.query_string()
    context |= {
        "page": page,
        "rows": [session_row(session, site_names) for session in page],
        "totals": totals(selected),
        "query": query,
        "page_query": f"{query}&" if query else "",
        "config": {"daily": daily_energy(selected, site_names)},
    }
    return render(request, "gateway/sessions.html", context)


def session_row(session: ChargingSession, site_names: dict[str, str]) -> dict[str, Any]:
    return {
        "session": session,
        "site_name": site_names.get(session.site_slug, session.site_slug),
        "duration": format_duration(session.duration),
        "energy_kwh": f"{session.energy_kwh:.2f}",
        "peak_kw": "—" if session.peak_power_w is None else f"{session.peak_power_w / 1000:.1f}",
        "state": session_state(session),
    }


@require_safe
@login_required
def sessions_csv(request: HttpRequest) -> HttpResponse:
    """The filtered sessions as CSV, oldest first, streamed: any range, in constant memory."""
    form = SessionFilter(request.GET)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in form.errors.items())
        return HttpResponse(f"bad filter: {errors}\n", status=400, content_type="text/plain; charset=utf-8")
    return csv_download(request, form.sessions())


def csv_download(request: HttpRequest, sessions: QuerySet[ChargingSession]) -> StreamingHttpResponse:
    """The sessions as a streamed CSV attachment, oldest first (the page's and the API's)."""
    selected = sessions.order_by("started_at", "id")
    lines = csv_lines_async(selected) if isinstance(request, ASGIRequest) else csv_lines(selected)
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="evdash-sessions-{stamp}.csv"'
    return response


@require_safe
@login_required
def session_detail(request: HttpRequest, session_id: int) -> HttpResponse:
    """One session: its figures and its power curve from the stored history."""
    session = get_object_or_404(ChargingSession.objects.select_related("charge_point"), pk=session_id)
    site = Site.objects.filter(slug=session.site_slug).first()
    end = session.ended_at or session.last_ts
    curve: dict[str, Any] | None = None
    try:
        series = charge_point_series(
            session.charge_point_slug,
            session.started_at - CURVE_MARGIN,
            end + CURVE_MARGIN,
            max_points=CURVE_MAX_POINTS,
        )
    except ChargePoint.DoesNotExist:  # the charge point was deleted: its history went with it
        series = None
    if series is not None:
        curve = {
            "t": series["t"],
            "power_w": series["values"].get("power_w", []),
            "min_power_w": series.get("min", {}).get("power_w"),
            "max_power_w": series.get("max", {}).get("power_w"),
            "start": format_ts(session.started_at),
            "end": format_ts(end),
            "source": series["source"],
            "bucket_s": series["bucket_s"],
            "points": series["points"],
            "query_ms": series["query_ms"],
        }
    return render(
        request,
        "gateway/session_detail.html",
        {
            "session": session,
            "row": session_row(session, {site.slug: site.name} if site else {}),
            "site": site,
            "config": {"curve": curve},
        },
    )
