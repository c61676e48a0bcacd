"""API: history, the charts' service (gateway.history.query) with the charts' parameters and JSON.

- GET charge-points/{slug}/history/?start=&end= (ISO 8601 with a zone; end defaults to now) or
  ?range=hour|day|week (ending now; default hour), &max_points= (10..5000, default 1500),
  &roles=power_w,current_l1_a (default all): raw records when they fit in max_points, else epoch-aligned
  buckets with min/avg/max, from the one-minute rollups beyond a day.
- GET history/fleet-power/?window_s=600&bucket_s=5&site=: the fleet's power over the completed
  buckets of the last window_s seconds (the fleet chart's query).

The body is the page's JSON without its two per-request fields: the query time goes to a
Server-Timing header and the server's clock is the Date header. So a closed range asked again has
the same body and ETag, and a client's If-None-Match gets a 304 without the points.
"""

from typing import Any

from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.api.domain_serializers import (
    ApiErrorSerializer,
    ChargePointHistorySerializer,
    FleetPowerSerializer,
    InvalidQuery,
)
from gateway.api.etag import ETagMixin
from gateway.history.query import fleet_power_series
from gateway.history_views import (
    MAX_POINTS_MAX,
    MAX_POINTS_MIN,
    BadRequest,
    fleet_power_span,
    requested_series,
)
from gateway.models import ChargePoint, Site
from gateway.telemetry import format_ts

ERRORS = {400: ApiErrorSerializer, 401: ApiErrorSerializer, 404: ApiErrorSerializer}


def timed(series: dict[str, Any], extra: dict[str, Any]) -> Response:
    """The series with `extra`, its query time moved to a Server-Timing header (see the module doc)."""
    query_ms = series.pop("query_ms", None)
    response = Response(series | extra)
    if query_ms is not None:
        response["Server-Timing"] = f"db;dur={query_ms}"
    return response


class ChargePointHistoryView(ETagMixin, APIView):
    """One charge point's history over a range: raw records, or buckets with min/avg/max."""

    @extend_schema(
        operation_id="charge_point_history",
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATETIME, description="ISO 8601 with a time zone."),
            OpenApiParameter("end", OpenApiTypes.DATETIME, description="Default: now. At most 31 days after start."),
            OpenApiParameter("range", OpenApiTypes.STR, enum=["hour", "day", "week"], description="Instead of start."),
            OpenApiParameter(
                "max_points", OpenApiTypes.INT, description=f"{MAX_POINTS_MIN}..{MAX_POINTS_MAX} (default 1500)."
            ),
            OpenApiParameter("roles", OpenApiTypes.STR, description="Comma-separated values (default all)."),
        ],
        responses={200: ChargePointHistorySerializer, **ERRORS},
    )
    def get(self, request: Request, slug: str) -> Response:
        if not ChargePoint.objects.filter(slug=slug).exists():
            raise exceptions.NotFound(f"no charge point {slug!r}")
        now = timezone.now()
        try:
            name, series = requested_series(request, slug, now)
        except (BadRequest, ValueError) as error:
            raise InvalidQuery(str(error)) from None
        return timed(series, {"range": name})


class FleetPowerView(ETagMixin, APIView):
    """The fleet's power (of one site with ?site=) over the last window_s seconds, in completed buckets."""

    @extend_schema(
        operation_id="fleet_power_history",
        parameters=[
            OpenApiParameter("window_s", OpenApiTypes.NUMBER, description="1..86400 (default 600)."),
            OpenApiParameter("bucket_s", OpenApiTypes.NUMBER, description="≥ 1 (default 5); at most 5000 buckets."),
            OpenApiParameter("site", OpenApiTypes.STR, description="A site's slug (default: every site)."),
        ],
        responses={200: FleetPowerSerializer, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        site = request.query_params.get("site", "").strip() or None
        if site is not None and not Site.objects.filter(slug=site).exists():
            raise exceptions.NotFound(f"no site {site!r}")
        try:
            window_s, bucket_s, start, end = fleet_power_span(request, timezone.now())
        except BadRequest as error:
            raise InvalidQuery(str(error)) from None
        series = fleet_power_series(start, end, site=site, bucket_s=bucket_s)
        return timed(series, {"window_s": window_s, "site": site, "start": format_ts(start), "end": format_ts(end)})


urlpatterns = [
    path("charge-points/<slug:slug>/history/", ChargePointHistoryView.as_view(), name="charge-point-history"),
    path("history/fleet-power/", FleetPowerView.as_view(), name="fleet-power-history"),
]
