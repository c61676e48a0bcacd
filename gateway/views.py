"""Dashboard pages: painted from LatestTelemetry on the server, then kept live over WebSockets.

And the web entry point of operator commands: POST /chargepoints/<slug>/commands/ (the page's
Commands panel) and GET /commands/<id>/ (the page's fallback when no live update came).
"""

import logging
import math
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from gateway.choices import OPERATOR_ACTIONS, CommandAction, FailureReason, Iec61851State
from gateway.commands import service
from gateway.models import ChargePoint, Command, Site
from gateway.readings import (
    CARDS,
    STATUS_LABELS,
    describe_command,
    fleet_rules,
    format_amperes,
    format_extra,
    read_charge_point,
    summarize,
    with_meaning,
)
from gateway.sitecontrol.report import load_managed_readings
from gateway.telemetry import format_ts

# How much history the live charts keep: 10 minutes, bounded in points by the page scripts.
CHART_WINDOW_S = 600
# The per-charge-point charts plot every record; this caps their points for fast pollers.
CHART_MAX_POINTS = 3000
# Tiles in the server's first paint (the most urgent first): the page script then shows the whole
# fleet, drawing only what is on screen, so thousands of charge points never become thousands of
# elements.
FIRST_PAINT_TILES = 60
# The charge point page lists its last few commands (newest first), server-rendered then live.
RECENT_COMMANDS = 5
SEND_COMMAND_PERMISSION = "gateway.send_command"
NOT_PERMITTED = "you do not have the permission to send commands"
BUTTON_LABELS = {
    CommandAction.SET_CURRENT_LIMIT: "Set limit",
    CommandAction.PAUSE: "Pause",
    CommandAction.RESUME: "Resume",
}

logger = logging.getLogger(__name__)


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
    # Site load management: each load-managed site's limit and headroom (of the site shown, with ?site=).
    headrooms = load_managed_readings(now, [site] if site else None)
    config = page_config(now, ws_path) | {
        "charge_points": [reading.as_json() for reading in readings],
        "charge_point_url": reverse("gateway:charge_point", args=["__slug__"]),
        "site": site.slug if site else None,
        "site_headroom_url": reverse("gateway:fleet_site_headroom"),
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
            "site_headrooms": headrooms,
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
    # Checked here, on the server: without the permission the controls are not in the page at all
    # (and the POST refuses anyway).
    can_send = request.user.has_perm(SEND_COMMAND_PERMISSION)
    recent = [
        service.command_json(command) for command in Command.objects.filter(charge_point_slug=cp.slug)[:RECENT_COMMANDS]
    ]
    config = page_config(now, f"/ws/chargepoints/{cp.slug}/") | {
        "charge_point": reading.as_json(),
        "enums": enums,
        "commands": {
            "recent": recent,
            "recent_max": RECENT_COMMANDS,
            "send_url": reverse("gateway:send_command", args=[cp.slug]) if can_send else None,
            "command_url": reverse("gateway:command", args=[uuid.UUID(int=0)]),
            # describeCommand() in charge_point.js words a command as describe_command() does.
            "action_labels": dict(CommandAction.choices),
            "reason_labels": dict(FailureReason.choices),
        },
    }
    return render(
        request,
        "gateway/charge_point.html",
        {
            "cp": cp,
            "reading": reading,
            "active_limit_a": format_amperes((reading.record or {}).get("active_limit_a")),
            "extra": [
                (key, with_meaning(format_extra(value), enums.get(key))) for key, value in sorted(reading.extra.items())
            ],
            "can_send_commands": can_send,
            "controls": command_panel(cp) if can_send else None,
            "recent_commands": [describe_command(command) for command in recent],
            "config": config,
        },
    )


def command_panel(cp: ChargePoint) -> list[dict[str, Any]]:
    """The Commands panel's controls, one per action, from the profile's commands."""
    controls = service.command_controls(cp)
    return [{"action": action, "label": BUTTON_LABELS[action], **controls[action]} for action in OPERATOR_ACTIONS]


def json_error(error: str, status: int, reason_code: str = "", command: Command | None = None) -> JsonResponse:
    """A refusal the page can show: {"error", "reason_code", "command"}."""
    body = {"error": error, "reason_code": reason_code, "command": service.command_json(command) if command else None}
    return JsonResponse(body, status=status)


# require_POST outside login_required, as for the pages: a GET is a 405 for everyone. The CSRF
# middleware checks the token (the page sends it in X-CSRFToken) before the view runs.
@require_POST
@login_required
def send_command(request: HttpRequest, slug: str) -> JsonResponse:
    """Send one command to a charge point: 201 {"command"} pending, or 400/403 {"error", ...}."""
    action = request.POST.get("action", "")
    raw_value = request.POST.get("value", "").strip()
    # Before anything else, whatever the client sent: no permission, no command (and a trace of it).
    if not request.user.has_perm(SEND_COMMAND_PERMISSION):
        logger.warning(
            "user %s (id %s) may not send commands: %r to charge point %r refused (web)",
            request.user.get_username(),
            request.user.pk,
            action[:100],
            slug,
        )
        return json_error(NOT_PERMITTED, 403, FailureReason.NOT_PERMITTED)
    cp = get_object_or_404(ChargePoint.objects.select_related("site", "profile"), slug=slug)
    value = None
    if raw_value:
        try:
            value = float(raw_value)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return json_error(f"value: {raw_value[:50]!r} is not a number", 400, FailureReason.INVALID)
    try:
        command = service.send_command(cp, action, value, user=request.user, via="web", actions=OPERATOR_ACTIONS)
    except service.CommandRefused as refused:
        status = 403 if refused.reason_code == FailureReason.NOT_PERMITTED else 400
        return json_error(refused.reason, status, refused.reason_code, refused.command)
    return JsonResponse({"command": service.command_json(command)}, status=201)


@require_safe
@login_required
def command(request: HttpRequest, command_id: uuid.UUID) -> JsonResponse:
    """One command as the live updates carry it: what the page asks when no update came in time."""
    return JsonResponse({"command": service.command_json(get_object_or_404(Command, id=command_id))})
