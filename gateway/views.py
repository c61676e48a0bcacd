"""Dashboard pages: painted from LatestTelemetry on the server, then kept live over WebSockets."""

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_safe

from gateway.choices import Iec61851State
from gateway.models import ChargePoint, Site
from gateway.readings import (
    CARDS,
    STATUS_LABELS,
    fleet_rules,
    format_extra,
    read_charge_point,
    summarize,
    with_meaning,
)
from gateway.telemetry import format_ts

# How much history the live charts keep: 10 minutes, bounded in points by the page scripts.
CHART_WINDOW_S = 600
# The per-charge-point charts plot every record; this caps their points for fast pollers.
CHART_MAX_POINTS = 3000
# Tiles in the server's first paint (the most urgent first): the page script then shows the whole
# fleet, drawing only what is on screen, so thousands of charge points never become thousands of
# elements.
FIRST_PAINT_TILES = 60


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
    """The enabled charge points (of one site with ?site=), a fleet summary and the fleet power chart."""
    now = timezone.now()
    sites = Site.objects.filter(charge_points__enabled=True).distinct()
    site = None
    charge_points = ChargePoint.objects.filter(enabled=True).select_related("site", "latest")
    ws_path = "/ws/fleet/"
    if site_slug := request.GET.get("site"):
        site = get_object_or_404(Site, slug=site_slug)
        charge_points = charge_points.filter(site=site)
        # The socket then carries this site's records only (the page ignores any other anyway).
        ws_path += "?" + urlencode({"site": site.slug})
    readings = sorted((read_charge_point(cp, now) for cp in charge_points), key=lambda r: r.attention_key)
    summary = summarize(readings)
    config = page_config(now, ws_path) | {
        "charge_points": [reading.as_json() for reading in readings],
        "charge_point_url": reverse("gateway:charge_point", args=["__slug__"]),
        "site": site.slug if site else None,
        **fleet_rules(),
    }
    return render(
        request,
        "gateway/fleet.html",
        {
            "sites": sites,
            "site": site,
            "total": len(readings),
            "readings": readings[:FIRST_PAINT_TILES],
            "summary": summary.rows(),
            "total_power_kw": summary.power_kw,
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
