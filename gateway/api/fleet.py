"""API: sites, device profiles, charge points (read and write) and their latest telemetry.

Thin views: charge point writes are validated by the admin's form (serializers.py) and need the
same model permissions as the admin; the telemetry answers come from gateway.readings, as the
pages' do. A running poller picks a changed charge point up on its next reload (updated_at).
"""

from typing import Any

from django.db.models import Count, QuerySet
from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, permissions, serializers, viewsets
from rest_framework.routers import SimpleRouter

from gateway.admin import pacing_warnings
from gateway.api.etag import ETagMixin
from gateway.api.serializers import (
    ChargePointSerializer,
    LatestTelemetrySerializer,
    ProfileDetailSerializer,
    ProfileSerializer,
    SiteSerializer,
    latest_rows,
)
from gateway.models import ChargePoint, DeviceProfile, Site

SITE_FILTER = OpenApiParameter("site", OpenApiTypes.STR, description="Only the charge points of this site (slug).")
CHARGE_POINT_FILTERS = [
    SITE_FILTER,
    OpenApiParameter("profile", OpenApiTypes.STR, description="Only charge points read with this profile (slug)."),
    OpenApiParameter("enabled", OpenApiTypes.BOOL, description="Only enabled (true) or disabled (false) ones."),
]
TRUE_VALUES = {"true", "1", "yes", "on"}


def filter_charge_points(queryset: QuerySet, params: Any, names: tuple[str, ...]) -> QuerySet:
    """Apply the ?site=, ?profile= and ?enabled= filters among `names` that the request sets."""
    if "site" in names and (site := params.get("site")):
        queryset = queryset.filter(site__slug=site)
    if "profile" in names and (profile := params.get("profile")):
        queryset = queryset.filter(profile__slug=profile)
    if "enabled" in names and (enabled := params.get("enabled")):
        queryset = queryset.filter(enabled=enabled.lower() in TRUE_VALUES)
    return queryset


class SiteViewSet(ETagMixin, viewsets.ReadOnlyModelViewSet):
    """Sites, with how many charge points each has."""

    queryset = Site.objects.annotate(charge_point_count=Count("charge_points"))
    serializer_class = SiteSerializer
    lookup_field = "slug"
    ordering = "slug"


class ProfileViewSet(ETagMixin, viewsets.ReadOnlyModelViewSet):
    """Device profiles; one profile comes with its register map (`spec`, the admin's export)."""

    queryset = DeviceProfile.objects.all()
    lookup_field = "slug"
    ordering = "slug"

    def get_queryset(self) -> QuerySet:
        if self.action == "retrieve":  # load_spec reads the registers and status rules
            return DeviceProfile.objects.prefetch_related("registers", "status_rules")
        return super().get_queryset()

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return ProfileDetailSerializer if self.action == "retrieve" else ProfileSerializer


class ChargePointWriteSerializer(ChargePointSerializer):
    """What a write answers: the charge point as saved and what the admin would warn about."""

    warnings = serializers.SerializerMethodField()

    class Meta(ChargePointSerializer.Meta):
        fields = [*ChargePointSerializer.Meta.fields, "warnings"]

    def get_warnings(self, charge_point: ChargePoint) -> list[str]:
        return pacing_warnings(charge_point)


@extend_schema_view(
    list=extend_schema(parameters=CHARGE_POINT_FILTERS),
    create=extend_schema(responses={201: ChargePointWriteSerializer}),
    partial_update=extend_schema(responses=ChargePointWriteSerializer),
)
class ChargePointViewSet(ETagMixin, viewsets.ModelViewSet):
    """Charge points. Writes need gateway.add/change/delete_chargepoint and pass the admin's validation."""

    queryset = ChargePoint.objects.select_related("site", "profile")
    serializer_class = ChargePointSerializer
    permission_classes = [permissions.DjangoModelPermissions]
    lookup_field = "slug"
    ordering = "slug"
    # PUT would have to restate every field; PATCH changes what it names.
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet:
        return filter_charge_points(super().get_queryset(), self.request.query_params, ("site", "profile", "enabled"))

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return ChargePointWriteSerializer if self.request.method in ("POST", "PATCH") else ChargePointSerializer


class LatestTelemetryMixin:
    """The charge points with their latest record, read at one `now` per request."""

    queryset = ChargePoint.objects.all()
    serializer_class = LatestTelemetrySerializer

    def get_queryset(self) -> QuerySet:
        return latest_rows(self.filtered(super().get_queryset()))  # type: ignore[misc]

    def filtered(self, queryset: QuerySet) -> QuerySet:
        return queryset

    def get_serializer_context(self) -> dict[str, Any]:
        return super().get_serializer_context() | {"now": timezone.now()}  # type: ignore[misc]


@extend_schema(parameters=CHARGE_POINT_FILTERS)
class FleetLatestTelemetryView(ETagMixin, LatestTelemetryMixin, generics.ListAPIView):
    """Every charge point's latest record and whether it is stale (filters: site, profile, enabled)."""

    ordering = "slug"

    def filtered(self, queryset: QuerySet) -> QuerySet:
        return filter_charge_points(queryset, self.request.query_params, ("site", "profile", "enabled"))


class ChargePointLatestTelemetryView(ETagMixin, LatestTelemetryMixin, generics.RetrieveAPIView):
    """One charge point's latest record and whether it is stale (record null before the first one)."""

    lookup_field = "slug"


router = SimpleRouter()
router.register("sites", SiteViewSet, basename="site")
router.register("profiles", ProfileViewSet, basename="profile")
router.register("charge-points", ChargePointViewSet, basename="charge-point")

urlpatterns: list = [
    path("telemetry/latest/", FleetLatestTelemetryView.as_view(), name="telemetry-latest"),
    path(
        "charge-points/<slug:slug>/telemetry/latest/",
        ChargePointLatestTelemetryView.as_view(),
        name="charge-point-telemetry-latest",
    ),
    *router.urls,
]
