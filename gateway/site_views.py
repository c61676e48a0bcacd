"""Site load management pages: the sites, one site's control (live chart, chargers, overrides), its
history as JSON, the override form's POSTs, and the fleet summary's headroom lines as JSON.

- GET /sites/: every site, its limit and its headroom now.
- GET /sites/<slug>/: the state line, the chart (live over ws/sites/<slug>/), the chargers' table,
  and (with gateway.override_allocation) the override form and cancel buttons.
- GET /sites/<slug>/history/?range=hour|day|week or ?start=&end=, &max_points= -> {"points": [...]}
  (gateway.sitecontrol.report.chart_point of each status; the most loaded of each slice beyond max_points).
- POST /sites/<slug>/overrides/ (charge_point, current_a, duration_min, reason) -> 201 {"override",
  "overrides"} or 400/403/404 {"error", "code", "field"}.
- POST /sites/<slug>/overrides/<id>/cancel/ -> 200 {"override", "overrides"}.
- GET /fleet/site-headroom/ -> {"sites": [reading, ...]}: the fleet page refreshes its lines with it.
The checks of an override are the service's (gateway.sitecontrol.overrides), the same as the API's.
"""

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from gateway.history_views import (
    MAX_POINTS_DEFAULT,
    MAX_POINTS_MAX,
    MAX_POINTS_MIN,
    BadRequest,
    json_error,
    login_required_json,
    parse_number,
    requested_span,
)
from gateway.models import ChargePoint, Site
from gateway.readings import format_age
from gateway.sitecontrol import overrides as override_service
from gateway.sitecontrol.report import (
    LIVE_WINDOW_S,
    chart_point,
    load_managed_readings,
    read_site_control,
    stale_after_s,
    statuses_between,
)
from gateway.telemetry import format_ts

# The override form's durations, in minutes (the service takes 1 min to 24 h).
DURATIONS_MIN = [(15, "15 min"), (30, "30 min"), (60, "1 h"), (120, "2 h"), (240, "4 h"), (480, "8 h"), (1440, "24 h")]
DEFAULT_DURATION_MIN = 60
STATUS_CODES = {"not_permitted": 403, "not_found": 404}


@require_safe
@login_required
def sites(request: HttpRequest) -> HttpResponse:
    """Every site: its charge points, its limit and, with load management, its headroom now."""
    now = timezone.now()
    rows = []
    for site in Site.objects.all():
        reading = read_site_control(site, now) if site.load_managed else None
        rows.append(
            {"site": site, "charge_points": site.charge_points.filter(enabled=True).count(), "reading": reading}
        )
    return render(request, "gateway/sites.html", {"rows": rows})


@require_safe
@login_required
def site(request: HttpRequest, slug: str) -> HttpResponse:
    """One site's load management: painted from its newest SiteSample, then live."""
    now = timezone.now()
    site_row = get_object_or_404(Site.objects.select_related("meter_profile"), slug=slug)
    charge_points = list(ChargePoint.objects.filter(site=site_row, enabled=True).select_related("profile"))
    if not site_row.load_managed:
        return render(request, "gateway/site.html", {"site": site_row, "charge_points": charge_points})
    reading = read_site_control(site_row, now)
    status = reading.status or {}
    shares = {share["charge_point"]: share for share in status.get("chargers", [])}
    can_override = request.user.has_perm(override_service.PERMISSION)
    chargers = []
    for cp in charge_points:
        allowed = override_service.charger_range(cp)
        chargers.append(
            {
                "slug": cp.slug,
                "name": cp.name,
                "url": reverse("gateway:charge_point", args=[cp.slug]),
                "priority": cp.priority,
                "wiring": cp.wiring,
                "min_a": allowed.min_a,
                "max_a": allowed.max_a,
                "cells": share_cells(shares.get(cp.slug)),
            }
        )
    in_force = [override_service.override_json(o, now) for o in override_service.overrides_in_force(site_row.slug, now)]
    config = {
        "site": site_row.slug,
        "ws_path": f"/ws/sites/{site_row.slug}/",
        "server_now": format_ts(now),
        "window_s": LIVE_WINDOW_S,
        "stale_after_s": stale_after_s(site_row),
        "limit_a": site_row.limit_a,
        "status": reading.status,
        "chargers": [{key: value for key, value in c.items() if key != "cells"} for c in chargers],
        "history_url": reverse("gateway:site_history", args=[site_row.slug]),
        "overrides": in_force,
        "override_url": reverse("gateway:site_overrides", args=[site_row.slug]) if can_override else None,
        "cancel_url": reverse("gateway:cancel_site_override", args=[site_row.slug, uuid.UUID(int=0)])
        if can_override
        else None,
    }
    return render(
        request,
        "gateway/site.html",
        {
            "site": site_row,
            "charge_points": charge_points,
            "reading": reading,
            "state_text": reading.state_text(),
            "meter_text": meter_text(status),
            "chargers": chargers,
            "overrides": [override | {"until_text": time_text(override["expires_at"])} for override in in_force],
            "can_override": can_override,
            "durations": DURATIONS_MIN,
            "default_duration": DEFAULT_DURATION_MIN,
            "config": config,
        },
    )


def amperes(value: float | None) -> str:
    """12.0 -> "12 A", 6.54 -> "6.5 A", None -> "—": amperes() in site.js."""
    return "—" if value is None else f"{round(value, 1):g} A"


def share_cells(share: dict[str, Any] | None) -> dict[str, str]:
    """A charger's row of the table from its line of the status: shareCells() in site.js."""
    if share is None:
        return {"allocated": "—", "actual": "—", "state": "", "reason": "", "override": ""}
    actual = " / ".join(f"{round(value, 1):g}" for value in share.get("actual_a") or [])
    override = ""
    if share.get("override_a") is not None:
        until = f" until {time_text(share['override_until'])}" if share.get("override_until") else ""
        override = f"{amperes(share['override_a'])}{until}"
    return {
        "allocated": amperes(share.get("allocated_a")),
        "actual": f"{actual} A" if actual else "—",
        "state": share.get("state") or "",
        "reason": share.get("reason") or "",
        "override": override,
    }


def time_text(iso: str) -> str:
    """ "14:03 UTC" of an ISO timestamp: timeText() in site.js."""
    return f"{iso[11:16]} UTC" if len(iso) >= 16 else iso


def meter_text(status: dict[str, Any]) -> str:
    """Where the draw comes from and how fresh the meter is: meterText() in site.js."""
    if not status:
        return "meter: —"
    if status.get("draw_source") == "estimate":
        return "no meter: the chargers' currents + the base load"
    age_s = status.get("meter_age_s")
    if status.get("draw_source") == "fallback":
        return "meter: no reading" if age_s is None else f"meter stale: last read {format_age(age_s * 1000)}"
    return "meter: —" if age_s is None else f"meter read {age_s:.1f} s ago"


@require_safe
@login_required_json
def site_history(request: HttpRequest, slug: str) -> JsonResponse:
    """The chart's points over a range (see the module doc)."""
    site_row = Site.objects.filter(slug=slug).first()
    if site_row is None:
        return json_error(f"no site {slug!r}", 404)
    now = timezone.now()
    try:
        name, start, end = requested_span(request, now)
        max_points = int(parse_number(request, "max_points", MAX_POINTS_DEFAULT, MAX_POINTS_MIN, MAX_POINTS_MAX))
    except BadRequest as error:
        return json_error(str(error), 400)
    statuses = statuses_between(site_row.slug, start, end, max_points)
    return JsonResponse(
        {
            "site": site_row.slug,
            "range": name,
            "start": format_ts(start),
            "end": format_ts(end),
            "points": [chart_point(status) for status in statuses],
            "server_now": format_ts(now),
        }
    )


def refusal(refused: override_service.OverrideRefused) -> JsonResponse:
    status = STATUS_CODES.get(refused.code, 400)
    return JsonResponse({"error": refused.message, "code": refused.code, "field": refused.field}, status=status)


def answer(site_slug: str, override: Any, status: int) -> JsonResponse:
    now = timezone.now()
    in_force = override_service.overrides_in_force(site_slug, now)
    body = {
        "override": override_service.override_json(override, now),
        "overrides": [override_service.override_json(o, now) for o in in_force],
    }
    return JsonResponse(body, status=status)


# require_POST outside login_required, as for the command panel; CSRF is checked by the middleware.
@require_POST
@login_required_json
def create_override(request: HttpRequest, slug: str) -> JsonResponse:
    """The override form: an override of one charger of this site (see the module doc)."""
    duration_min = request.POST.get("duration_min", "").strip()
    try:
        duration_s = float(duration_min) * 60 if duration_min else None
    except ValueError:
        duration_s = duration_min  # the service words the refusal
    try:
        override = override_service.create_override(
            slug,
            request.POST.get("charge_point", ""),
            request.POST.get("current_a", ""),
            duration_s=duration_s,
            reason=request.POST.get("reason", ""),
            user=request.user,
            via="web",
        )
    except override_service.OverrideRefused as refused:
        if refused.field == "duration_s":
            refused.field = "duration_min"
        return refusal(refused)
    return answer(slug, override, 201)


@require_POST
@login_required_json
def cancel_override(request: HttpRequest, slug: str, override_id: uuid.UUID) -> JsonResponse:
    """A cancel button: the override ends now."""
    try:
        override = override_service.cancel_override(slug, override_id, user=request.user, via="web")
    except override_service.OverrideRefused as refused:
        return refusal(refused)
    return answer(slug, override, 200)


@require_safe
@login_required_json
def site_headroom(request: HttpRequest) -> JsonResponse:
    """The fleet summary's lines: each load-managed site's limit and headroom (or why none)."""
    now = timezone.now()
    return JsonResponse({"sites": [reading.as_json() for reading in load_managed_readings(now)]})
