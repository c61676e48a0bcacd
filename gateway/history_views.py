"""History for the charts, as JSON: one charge point's series and the fleet's power.

Thin views: they check the input and call gateway.history.query, which picks raw records or
server-side buckets so that a week of 1 Hz data stays a few thousand points.

- GET /chargepoints/<slug>/history/?range=hour|day|week (ending now), or ?start=&end= (ISO 8601
  with a time zone; end defaults to now), optional &max_points= (10 to 5000, default 1500) and
  &roles=power_w,current_l1_a (the values to send; default all)
  -> charge_point_series(...) plus "range" and "server_now".
- GET /fleet/power-history/?window_s=600&site=&bucket_s= -> fleet_power_series(...) over the
  completed buckets of the last window_s seconds, plus "window_s", "site" and "server_now".
Bad input is a 400 {"error": "..."}; an unknown charge point or site a 404 {"error": "..."}; an
anonymous request a 401 {"error": "login required"} (a fetch() cannot follow a login redirect).
"""

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_safe

from gateway.history.query import charge_point_series, fleet_power_series
from gateway.models import ChargePoint, Site
from gateway.telemetry import format_ts

# The named ranges of the page's picker, each ending now.
RANGES_S = {"hour": 3600, "day": 86_400, "week": 7 * 86_400}
DEFAULT_RANGE = "hour"
# The longest range one request may ask for: beyond it even one-minute rollups are ~45,000 rows
# per charge point to group, and nobody reads a month off one chart.
MAX_RANGE = timedelta(days=31)
MAX_POINTS_DEFAULT = 1500
MAX_POINTS_MIN, MAX_POINTS_MAX = 10, 5000
# The fleet chart: its window (the page asks for its own, 600 s) and its bucket.
FLEET_WINDOW_DEFAULT_S = 600
FLEET_WINDOW_MAX_S = 86_400
FLEET_BUCKET_DEFAULT_S = 5.0
FLEET_BUCKET_MIN_S = 1.0
FLEET_POINTS_MAX = 5000


class BadRequest(ValueError):
    """Input the views refuse, with the reason the client is shown."""


def json_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def login_required_json(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like login_required, but an anonymous request gets a 401 JSON answer, not a redirect."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return json_error("login required", 401)
        return view(request, *args, **kwargs)

    return wrapped


def parse_moment(name: str, text: str) -> datetime:
    """An ISO 8601 date-time with a time zone (Z or ±hh:mm)."""
    try:
        moment = parse_datetime(text.strip())
    except ValueError:
        moment = None
    if moment is None:
        raise BadRequest(f"{name} is not an ISO 8601 date-time (e.g. 2025-01-31T08:00:00Z): {text!r}")
    if timezone.is_naive(moment):
        raise BadRequest(f"{name} needs a time zone (Z or +hh:mm): {text!r}")
    return moment


def parse_number(request: HttpRequest, name: str, default: float, low: float, high: float) -> float:
    """A finite number between low and high (inclusive), or `default` when the parameter is absent."""
    text = request.GET.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number: {text!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}: {text!r}")
    return value


def requested_span(request: HttpRequest, now: datetime) -> tuple[str, datetime, datetime]:
    """(range name or "custom", start, end) of a charge point history request."""
    start_text, end_text = request.GET.get("start", ""), request.GET.get("end", "")
    if start_text or end_text:
        if "range" in request.GET:
            raise BadRequest("give either range or start/end, not both")
        if not start_text:
            raise BadRequest("end needs a start")
        start = parse_moment("start", start_text)
        end = parse_moment("end", end_text) if end_text else now
        if end <= start:
            raise BadRequest("end must be after start")
        if end - start > MAX_RANGE:
            raise BadRequest(f"the range is longer than {MAX_RANGE.days} days")
        return "custom", start, end
    name = request.GET.get("range", DEFAULT_RANGE)
    if name not in RANGES_S:
        raise BadRequest(f"range must be one of {', '.join(RANGES_S)}: {name!r}")
    return name, now - timedelta(seconds=RANGES_S[name]), now


def requested_series(request: HttpRequest, slug: str, now: datetime) -> tuple[str, dict[str, Any]]:
    """(range name, series) that a request's range, max_points and roles ask of a charge point;
    BadRequest or ValueError for what it cannot ask. The page's JSON and the API's both answer it."""
    name, start, end = requested_span(request, now)
    max_points = int(parse_number(request, "max_points", MAX_POINTS_DEFAULT, MAX_POINTS_MIN, MAX_POINTS_MAX))
    roles = [role.strip() for role in request.GET.get("roles", "").split(",") if role.strip()]
    return name, charge_point_series(slug, start, end, max_points=max_points, roles=roles or None)


@require_safe
@login_required_json
def charge_point_history(request: HttpRequest, slug: str) -> HttpResponse:
    """One charge point's series over a range: raw records, or buckets with min/avg/max."""
    if not ChargePoint.objects.filter(slug=slug).exists():
        return json_error(f"no charge point {slug!r}", 404)
    now = timezone.now()
    try:
        name, series = requested_series(request, slug, now)
    except (BadRequest, ValueError) as error:
        return json_error(str(error), 400)
    return JsonResponse(series | {"range": name, "server_now": format_ts(now)})


@require_safe
@login_required_json
def fleet_power_history(request: HttpRequest) -> HttpResponse:
    """The fleet's power (of one site with ?site=) over the last window_s seconds, in buckets."""
    site = request.GET.get("site", "").strip() or None
    if site is not None and not Site.objects.filter(slug=site).exists():
        return json_error(f"no site {site!r}", 404)
    now = timezone.now()
    try:
        window_s, bucket_s, start, end = fleet_power_span(request, now)
    except BadRequest as error:
        return json_error(str(error), 400)
    series = fleet_power_series(start, end, site=site, bucket_s=bucket_s)
    return JsonResponse(series | {"window_s": window_s, "site": site, "server_now": format_ts(now)})


def fleet_power_span(request: HttpRequest, now: datetime) -> tuple[float, float, datetime, datetime]:
    """(window_s, bucket_s, start, end) of a fleet power request (the page's and the API's)."""
    window_s = parse_number(request, "window_s", FLEET_WINDOW_DEFAULT_S, 1, FLEET_WINDOW_MAX_S)
    bucket_s = parse_number(request, "bucket_s", FLEET_BUCKET_DEFAULT_S, FLEET_BUCKET_MIN_S, FLEET_WINDOW_MAX_S)
    if window_s / bucket_s > FLEET_POINTS_MAX:
        raise BadRequest(f"window_s / bucket_s is over {FLEET_POINTS_MAX} points: use a longer bucket")
    # Completed buckets only: the one still filling would show a dip (not every charge point has
    # reported in it yet), and the page's live line takes over from its start.
    epoch_s = now.timestamp()
    end = datetime.fromtimestamp(epoch_s - epoch_s % bucket_s, tz=now.tzinfo)
    return window_s, bucket_s, end - timedelta(seconds=window_s), end
