"""API: charging sessions, with the sessions page's filters (gateway.sessions.report.SessionFilter).

- GET sessions/?site=&charge_point=&date_from=&date_to= (UTC days, both inclusive): newest first,
  in cursor pages (?limit=, then the `next` link).
- GET sessions/{id}/: one session.
- GET sessions/export.csv?<the same filters>: the page's CSV (same columns, oldest first), streamed.
"""

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.views import APIView

from gateway.api.domain_serializers import SessionSerializer, valid_filters
from gateway.api.etag import ETagMixin
from gateway.api.pagination import CursorPage
from gateway.models import ChargingSession
from gateway.session_views import csv_download
from gateway.sessions.report import SessionFilter

# Newest first; the position is started_at (indexed), ties broken by id.
ORDERING = ("-started_at", "-id")
FILTERS = [
    OpenApiParameter("site", OpenApiTypes.STR, description="A site's slug."),
    OpenApiParameter("charge_point", OpenApiTypes.STR, description="A charge point's slug."),
    OpenApiParameter("date_from", OpenApiTypes.DATE, description="Sessions started on or after this UTC day."),
    OpenApiParameter("date_to", OpenApiTypes.DATE, description="Sessions started on or before this UTC day."),
]


class SessionPage(CursorPage):
    ordering = ORDERING


def filtered_sessions(request: Request) -> QuerySet[ChargingSession]:
    """The sessions the page's filters select; a 400 naming the bad filters."""
    return valid_filters(SessionFilter(request.query_params)).sessions()


class SessionListView(ETagMixin, generics.ListAPIView):
    """Charging sessions, newest first, filtered as on the sessions page."""

    serializer_class = SessionSerializer
    pagination_class = SessionPage
    ordering = ORDERING

    def get_queryset(self) -> QuerySet[ChargingSession]:
        return filtered_sessions(self.request)

    @extend_schema(operation_id="sessions_list", parameters=FILTERS)
    def get(self, request: Request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SessionDetailView(ETagMixin, generics.RetrieveAPIView):
    """One charging session."""

    serializer_class = SessionSerializer
    queryset = ChargingSession.objects.all()
    lookup_url_kwarg = "session_id"


class SessionCsvView(APIView):
    """The filtered sessions as the page's CSV, oldest first, streamed in constant memory."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # A client asking for text/csv gets the CSV; only an error is rendered, as JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        operation_id="sessions_csv",
        parameters=FILTERS,
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR,
                description="session_id, charge_point, site, started_at, ended_at, duration_s, energy_kwh, "
                "peak_power_kw, end_reason",
            )
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        return csv_download(request._request, filtered_sessions(request))


urlpatterns = [
    path("sessions/", SessionListView.as_view(), name="sessions"),
    path("sessions/export.csv", SessionCsvView.as_view(), name="sessions-csv"),
    path("sessions/<int:session_id>/", SessionDetailView.as_view(), name="session"),
]
