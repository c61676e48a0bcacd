"""The pipeline-health page: GET /pipeline/ (the page) and GET /pipeline/?format=json (what its script
polls every PAGE_REFRESH_S). Both render gateway.pipeline.report.pipeline_report(); the page also
opens the fleet WebSocket to measure the last hop, to this browser."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_safe

from gateway.alert_views import wants_json
from gateway.pipeline.report import pipeline_report

PAGE_REFRESH_S = 2.0


@require_safe
@login_required
def pipeline(request: HttpRequest) -> HttpResponse:
    """Each stage's state and why, per-hop latency, outbox depth, consumer lag, dead letters, last error."""
    report = pipeline_report(timezone.now())
    if wants_json(request):
        return JsonResponse(report)
    config = {
        "report": report,
        "json_url": reverse("gateway:pipeline") + "?format=json",
        "ws_path": "/ws/fleet/",
        "refresh_s": PAGE_REFRESH_S,
        "server_now": report["as_of"],
    }
    return render(request, "gateway/pipeline.html", {"report": report, "config": config})
