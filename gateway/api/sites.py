"""API: a site's load management: its controller's latest status, its history, and overrides.

- GET sites/{slug}/control/: the newest SiteStatus of the site (null before the first), its age
  and whether it is stale (gateway.sitecontrol.report: 3 control periods + 10 s).
- GET sites/{slug}/control/history/?from=&to=: the SiteSample rows (each with its whole status),
  newest first, in cursor pages; from/to are ISO 8601 with a time zone (both optional).
- GET sites/{slug}/overrides/?state=in_force|all (default all): the site's overrides (the audit),
  newest first, in cursor pages.
- POST sites/{slug}/overrides/ {"charge_point", "current_a", "duration_s" | "expires_at", "reason"?}:
  needs gateway.override_allocation (403 "not_permitted" before anything is read or stored);
  the service's checks (gateway.sitecontrol.overrides) answer 400 with their code and field.
- GET sites/{slug}/overrides/{id}/: one override.
- DELETE sites/{slug}/overrides/{id}/: cancel it now (same permission); an ended one is answered as it is.
Reads need a login only, as the site page.
"""

import logging
import uuid
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.api.domain_serializers import ApiErrorSerializer, InvalidQuery
from gateway.api.errors import error_body
from gateway.api.etag import ETagMixin
from gateway.api.pagination import CursorPage
from gateway.models import AllocationOverride, Site, SiteSample
from gateway.sitecontrol import overrides as override_service
from gateway.sitecontrol.report import read_site_control
from gateway.telemetry import format_ts

logger = logging.getLogger(__name__)

ERRORS = {401: ApiErrorSerializer, 403: ApiErrorSerializer, 404: ApiErrorSerializer}
STATUS_CODES = {"not_permitted": 403, "not_found": 404}
OVERRIDE_STATES = ("all", "in_force")


class CanOverride(permissions.BasePermission):
    """gateway.override_allocation for writes, checked before the request is read; reads need a login."""

    message = "You may not override allocations (the gateway.override_allocation permission)."
    code = "not_permitted"

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in permissions.SAFE_METHODS or request.user.has_perm(override_service.PERMISSION):
            return True
        logger.warning(
            "user %s (id %s) may not override allocations: %s at site %r refused (api)",
            request.user.get_username(),
            request.user.pk,
            request.method,
            view.kwargs.get("slug"),
        )
        return False


# --- Shapes (schema; the bodies are built by the functions they name) ------------------------------


class SiteControlSerializer(serializers.Serializer):
    site = serializers.SlugField()
    load_managed = serializers.BooleanField(help_text="False: the site has no connection limit.")
    limit_a = serializers.FloatField(allow_null=True)
    state = serializers.CharField(
        help_text="controlling, fallback, refused, starting; stale (no status for 3 periods + 10 s) or none."
    )
    stale = serializers.BooleanField()
    age_s = serializers.FloatField(allow_null=True, help_text="Since the newest status, s.")
    headroom_a = serializers.FloatField(allow_null=True)
    status = serializers.DictField(
        allow_null=True, help_text="The newest SiteStatus (gateway/sitecontrol/messages.py), or null."
    )


class SiteSampleSerializer(serializers.ModelSerializer):
    """One control period: the most loaded phase's draw and allocations, and the whole status."""

    at = serializers.SerializerMethodField()
    status = serializers.DictField(help_text="The SiteStatus of this period (gateway/sitecontrol/messages.py).")

    class Meta:
        model = SiteSample
        fields = ["at", "limit_a", "draw_a", "allocated_a", "state", "status"]

    def get_at(self, sample: SiteSample) -> str:
        return format_ts(sample.at)


class OverrideSerializer(serializers.Serializer):
    """Schema and rendering: gateway.sitecontrol.overrides.override_json."""

    id = serializers.UUIDField()
    charge_point = serializers.SlugField()
    site = serializers.SlugField()
    current_a = serializers.FloatField()
    reason = serializers.CharField(allow_blank=True)
    username = serializers.CharField()
    via = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    ended_by = serializers.CharField(allow_blank=True)
    in_force = serializers.BooleanField()

    def to_representation(self, instance: AllocationOverride) -> dict[str, Any]:
        return override_service.override_json(instance)


class OverrideRequestSerializer(serializers.Serializer):
    """Shape only: the service checks the values (range of the charger, 1 min..24 h) and words the errors."""

    charge_point = serializers.SlugField()
    current_a = serializers.FloatField(help_text="0 (pause) or the charger's minimum to its maximum, A.")
    duration_s = serializers.FloatField(required=False, help_text="60..86400 s. Or expires_at.")
    expires_at = serializers.DateTimeField(required=False, help_text="1 min to 24 h from now, with a time zone.")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=300)


# --- Views ------------------------------------------------------------------------------------------


def site_or_404(slug: str) -> Site:
    site = Site.objects.filter(slug=slug).first()
    if site is None:
        raise exceptions.NotFound(f"no site {slug!r}")
    return site


class SiteControlView(ETagMixin, APIView):
    """The site controller's newest status, its age and staleness."""

    @extend_schema(operation_id="site_control", responses={200: SiteControlSerializer, **ERRORS})
    def get(self, request: Request, slug: str) -> Response:
        site = site_or_404(slug)
        if not site.load_managed:
            body = {"site": site.slug, "load_managed": False, "limit_a": None, "state": "none", "stale": False}
            return Response(body | {"age_s": None, "headroom_a": None, "status": None})
        reading = read_site_control(site, timezone.now())
        summary = reading.as_json()
        return Response(
            {
                "site": site.slug,
                "load_managed": True,
                "limit_a": site.limit_a,
                "state": summary["state"],
                "stale": summary["stale"],
                "age_s": summary["age_s"],
                "headroom_a": summary["headroom_a"],
                "status": reading.status,
            }
        )


class SamplePage(CursorPage):
    ordering = ("-at", "-id")


class SiteControlHistoryView(ETagMixin, generics.ListAPIView):
    """The site's control periods (SiteSample rows), newest first."""

    serializer_class = SiteSampleSerializer
    pagination_class = SamplePage
    ordering = ("-at", "-id")

    def get_queryset(self) -> QuerySet[SiteSample]:
        site = site_or_404(self.kwargs["slug"])
        samples = SiteSample.objects.filter(site_slug=site.slug)
        start, end = moment(self.request, "from"), moment(self.request, "to")
        if start and end and end <= start:
            raise InvalidQuery("to must be after from")
        if start:
            samples = samples.filter(at__gte=start)
        if end:
            samples = samples.filter(at__lte=end)
        return samples

    @extend_schema(
        operation_id="site_control_history",
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATETIME, description="ISO 8601 with a time zone (inclusive)."),
            OpenApiParameter("to", OpenApiTypes.DATETIME, description="ISO 8601 with a time zone (inclusive)."),
        ],
        responses={200: SiteSampleSerializer(many=True), 400: ApiErrorSerializer, **ERRORS},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


def moment(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    try:
        value = parse_datetime(text)
    except ValueError:
        value = None
    if value is None:
        raise InvalidQuery(f"{name} is not an ISO 8601 date-time (e.g. 2025-01-31T08:00:00Z): {text[:50]!r}")
    if timezone.is_naive(value):
        raise InvalidQuery(f"{name} needs a time zone (Z or +hh:mm): {text[:50]!r}")
    return value


class OverridePage(CursorPage):
    ordering = ("-created_at", "-id")


def refusal(refused: override_service.OverrideRefused) -> Response:
    status = STATUS_CODES.get(refused.code, 400)
    fields = {refused.field: [refused.message]} if refused.field else None
    return Response(error_body(status, refused.code, refused.message, fields), status=status)


class OverrideListView(ETagMixin, generics.ListCreateAPIView):
    """The site's overrides, newest first; POST creates one."""

    permission_classes = [permissions.IsAuthenticated, CanOverride]
    serializer_class = OverrideSerializer
    pagination_class = OverridePage
    ordering = ("-created_at", "-id")

    def get_queryset(self) -> QuerySet[AllocationOverride]:
        site = site_or_404(self.kwargs["slug"])
        state = self.request.query_params.get("state", "all")
        if state not in OVERRIDE_STATES:
            raise InvalidQuery(f"state must be one of {', '.join(OVERRIDE_STATES)}: {state[:30]!r}")
        overrides = AllocationOverride.objects.filter(site_slug=site.slug)
        if state == "in_force":
            now = timezone.now()
            overrides = overrides.filter(ended_at__isnull=True, created_at__lte=now, expires_at__gt=now)
        return overrides

    @extend_schema(
        operation_id="site_overrides_list",
        parameters=[
            OpenApiParameter("state", OpenApiTypes.STR, enum=list(OVERRIDE_STATES), description="Default all.")
        ],
        responses={200: OverrideSerializer(many=True), 400: ApiErrorSerializer, **ERRORS},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="site_overrides_create",
        request=OverrideRequestSerializer,
        responses={201: OverrideSerializer, 400: ApiErrorSerializer, **ERRORS},
    )
    def post(self, request: Request, slug: str) -> Response:
        site = site_or_404(slug)
        asked = OverrideRequestSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        data = asked.validated_data
        try:
            override = override_service.create_override(
                site,
                data["charge_point"],
                data["current_a"],
                duration_s=data.get("duration_s"),
                expires_at=data.get("expires_at"),
                reason=data.get("reason", ""),
                user=request.user,
                via="api",
            )
        except override_service.OverrideRefused as refused:
            return refusal(refused)
        location = reverse("api:site-override", args=[site.slug, override.id])
        return Response(OverrideSerializer(override).data, status=201, headers={"Location": location})


class OverrideDetailView(ETagMixin, APIView):
    """One override; DELETE cancels it."""

    permission_classes = [permissions.IsAuthenticated, CanOverride]

    @extend_schema(operation_id="site_override", responses={200: OverrideSerializer, **ERRORS})
    def get(self, request: Request, slug: str, override_id: uuid.UUID) -> Response:
        override = get_object_or_404(AllocationOverride, id=override_id, site_slug=slug)
        return Response(OverrideSerializer(override).data)

    @extend_schema(operation_id="site_override_cancel", responses={200: OverrideSerializer, **ERRORS})
    def delete(self, request: Request, slug: str, override_id: uuid.UUID) -> Response:
        try:
            override = override_service.cancel_override(slug, override_id, user=request.user, via="api")
        except override_service.OverrideRefused as refused:
            return refusal(refused)
        return Response(OverrideSerializer(override).data)


urlpatterns = [
    path("sites/<slug:slug>/control/", SiteControlView.as_view(), name="site-control"),
    path("sites/<slug:slug>/control/history/", SiteControlHistoryView.as_view(), name="site-control-history"),
    path("sites/<slug:slug>/overrides/", OverrideListView.as_view(), name="site-overrides"),
    path("sites/<slug:slug>/overrides/<uuid:override_id>/", OverrideDetailView.as_view(), name="site-override"),
]
