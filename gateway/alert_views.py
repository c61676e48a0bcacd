"""Alert pages: GET /alerts/ (filtered and paginated; ?format=json is the fleet page's alert feed)
and POST /alerts/<id>/acknowledge/ (login and CSRF; gateway.alerts.actions.acknowledge does the work).

The views only render: raising, clearing and acknowledging (the timestamps, who, the Kafka message
and the live push) belong to gateway/alerts/, and the filters to gateway/alerts/report.py.
"""

import uuid

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST, require_safe

from gateway.alerts.actions import acknowledge as acknowledge_alert
from gateway.alerts.messages import alert_json
from gateway.alerts.report import DEFAULT_STATE, STATES, AlertFilterForm
from gateway.models import Alert
from gateway.telemetry import format_ts

ALERTS_PER_PAGE = 50
# The fleet page's feed asks for the alerts that need attention: more than this is a page to open.
FEED_MAX_ALERTS = 100


def wants_json(request: HttpRequest) -> bool:
    return request.GET.get("format") == "json" or "application/json" in request.headers.get("Accept", "")


# require_safe outside login_required, as for the other pages: another method is a 405 for everyone.
@require_safe
@login_required
def alerts(request: HttpRequest) -> HttpResponse:
    """The alerts, newest first, filtered by state (default: needs attention), severity, site, charge point.

    ?format=json: {"alerts": [alert_json, ...] (at most FEED_MAX_ALERTS, newest first), "total": int,
    "as_of": ts}; bad filters are a 400 {"error"} there, and the form's errors on the page.
    """
    form = AlertFilterForm(request.GET)
    valid = form.is_valid()
    if wants_json(request):
        if not valid:
            return JsonResponse({"error": form_errors(form)}, status=400)
        as_of = timezone.now()
        selected = form.filter(Alert.objects.all())
        rows = list(selected[:FEED_MAX_ALERTS])
        total = len(rows) if len(rows) < FEED_MAX_ALERTS else selected.count()
        body = {"alerts": [alert_json(alert) for alert in rows], "total": total, "as_of": format_ts(as_of)}
        return JsonResponse(body)
    selected = form.filter(Alert.objects.all()) if valid else Alert.objects.none()
    page = Paginator(selected, ALERTS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "state_label": STATES[(form.cleaned_data.get("state") if valid else "") or DEFAULT_STATE][0],
    }
    return render(request, "gateway/alerts.html", context, status=200 if valid else 400)


def form_errors(form: forms.Form) -> str:
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


# require_POST outside login_required: a GET is a 405 for everyone. The CSRF middleware checks the
# token (a form field, or X-CSRFToken from the fleet page's feed) before the view runs.
@require_POST
@login_required
def acknowledge(request: HttpRequest, alert_id: uuid.UUID) -> HttpResponse:
    """Acknowledge an alert: JSON {"alert": alert_json} for the feed, else back to the page it came from.

    A second acknowledgement changes nothing: the alert keeps who acknowledged it first, and when.
    """
    try:
        alert = acknowledge_alert(alert_id, request.user)
    except Alert.DoesNotExist:
        if wants_json(request):
            return JsonResponse({"error": "no such alert"}, status=404)
        raise Http404("no such alert") from None
    if wants_json(request):
        return JsonResponse({"alert": alert_json(alert)})
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = reverse("gateway:alerts")
    return HttpResponseRedirect(back)
