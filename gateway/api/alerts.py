"""API: alerts, with the alerts page's filters (gateway.alerts.report) and its acknowledgement
(gateway.alerts.actions.acknowledge: who and when kept, published on evdash.alerts, pushed to the pages).

- GET alerts/?state=attention|active|unacknowledged|all (default attention, as on the page)
  &severity=&site=&charge_point=: newest first, in cursor pages.
- GET alerts/{id}/: one alert.
- POST alerts/{id}/acknowledge/: any logged-in user, as on the page; a second acknowledgement
  keeps the first (who and when) and answers the alert as it stands.
Each alert is its evdash.alerts message (gateway.alerts.messages.alert_json).
"""

import uuid

from django.db.models import QuerySet
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.alerts.actions import acknowledge
from gateway.alerts.messages import alert_json
from gateway.alerts.report import STATES, AlertFilterForm
from gateway.api.domain_serializers import AlertSerializer, ApiErrorSerializer, valid_filters
from gateway.api.etag import ETagMixin
from gateway.api.pagination import CursorPage
from gateway.choices import AlertSeverity
from gateway.models import Alert

# Newest first; the position is raised_at (indexed), ties broken by id.
ORDERING = ("-raised_at", "-id")
FILTERS = [
    OpenApiParameter("state", OpenApiTypes.STR, enum=list(STATES), description="Default: attention."),
    OpenApiParameter("severity", OpenApiTypes.STR, enum=AlertSeverity.values),
    OpenApiParameter("site", OpenApiTypes.STR, description="A site's slug."),
    OpenApiParameter("charge_point", OpenApiTypes.STR, description="A charge point's slug."),
]


class AlertPage(CursorPage):
    ordering = ORDERING


class AlertListView(ETagMixin, generics.ListAPIView):
    """Alerts, newest first, filtered as on the alerts page (default: those needing attention)."""

    serializer_class = AlertSerializer
    pagination_class = AlertPage
    ordering = ORDERING

    def get_queryset(self) -> QuerySet[Alert]:
        return valid_filters(AlertFilterForm(self.request.query_params)).filter(Alert.objects.all())

    @extend_schema(operation_id="alerts_list", parameters=FILTERS)
    def get(self, request: Request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class AlertDetailView(ETagMixin, generics.RetrieveAPIView):
    """One alert."""

    serializer_class = AlertSerializer
    queryset = Alert.objects.all()
    lookup_url_kwarg = "alert_id"


class AlertAcknowledgeView(APIView):
    """Acknowledge an alert (idempotent: the first acknowledgement is kept)."""

    @extend_schema(
        operation_id="alerts_acknowledge",
        request=None,
        responses={200: AlertSerializer, 401: ApiErrorSerializer, 404: ApiErrorSerializer},
    )
    def post(self, request: Request, alert_id: uuid.UUID) -> Response:
        try:
            alert = acknowledge(alert_id, request.user)
        except Alert.DoesNotExist:
            raise exceptions.NotFound("no such alert") from None
        return Response(alert_json(alert))


urlpatterns = [
    path("alerts/", AlertListView.as_view(), name="alerts"),
    path("alerts/<uuid:alert_id>/", AlertDetailView.as_view(), name="alert"),
    path("alerts/<uuid:alert_id>/acknowledge/", AlertAcknowledgeView.as_view(), name="alert-acknowledge"),
]
