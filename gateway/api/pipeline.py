"""API: GET /api/v1/pipeline/: the pipeline-health report, the same JSON as the page's
(gateway.pipeline.report.pipeline_report)."""

from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway.api.etag import ETagMixin
from gateway.pipeline.report import pipeline_report


class PipelineView(ETagMixin, APIView):
    """Each stage of the pipeline (pollers, bridges, consumers): its state (ok, lagging, failing,
    stopped) and why, counters, outbox, consumer lag, dead letters, last error; the latency of each
    hop (p50/p95 over the last 60 s); and the verdict: where data is stuck."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["pipeline"], operation_id="pipeline_retrieve")
    def get(self, request: Request) -> Response:
        return Response(pipeline_report(timezone.now()))


urlpatterns = [path("pipeline/", PipelineView.as_view(), name="pipeline")]
