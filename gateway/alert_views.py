"""Alert pages: GET /alerts/ (filtered and paginated; ?format=json is the fleet page's alert feed,
and with &page=N one page of the /alerts/ page, which its script reads again after each reconnect)
and POST /alerts/<id>/acknowledge/ (login and CSRF; gateway.alerts.actions.acknowledge does the work).

The /alerts/ page is live (static/gateway/alerts_page.js, on the socket /ws/alerts/): the view gives
its script the page's alerts, the filters as data (AlertFilterForm.live_filter) and where it is in
the pages; only the first page takes new alerts in, later ones say that new alerts arrived.

The views only render: raising, clearing and acknowledging (the timestamps, who, the Kafka message
and the live push) belong to gateway/alerts/, and the filters to gateway/alerts/report.py.
"""

import uuid
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST, require_safe

from gateway.alerts.actions import acknowledge as acknowledge_alert
from gateway.alerts.messages import alert_json
from gateway.alerts.report import DEFAULT_STATE, STATES, AlertFilterForm
from gateway.choices import AlertSeverity
from gateway.models import Alert
from gateway.telemetry import format_ts

ALERTS_PER_PAGE = 50
# The fleet page's feed asks for the alerts that need attention: more than this is a page to open.
FEED_MAX_ALERTS = 100
# Newest first; ties broken by id, so that pages never share or skip an alert (as the API orders).
ORDERING = ("-raised_at", "-id")
# The socket of the /alerts/ page: alert updates only (gateway.live.consumers.AlertsConsumer).
ALERTS_WS_PATH = "/ws/alerts/"
# Placeholders the page script replaces: an alert's id in the acknowledge URL, a slug in a charge point's.
ALERT_ID_PLACEHOLDER = uuid.UUID(int=0)
SLUG_PLACEHOLDER = "__slug__"


def wants_json(request: HttpRequest) -> bool:
    return request.GET.get("format") == "json" or "application/json" in request.headers.get("Accept", "")


# require_safe outside login_required, as for the other pages: another method is a 405 for everyone.
@require_safe
@login_required
def alerts(request: HttpRequest) -> HttpResponse:
    """The alerts, newest first, filtered by state (default: needs attention), severity, site, charge point.

    ?format=json: {"alerts": [alert_json, ...] (at most FEED_MAX_ALERTS, newest first), "total": int,
    "as_of": ts}; with &page=N, that page of the /alerts/ page instead (alerts_page_json). Bad
    filters are a 400 {"error"} there, and the form's errors on the page.
    """
    form = AlertFilterForm(request.GET)
    valid = form.is_valid()
    if wants_json(request):
        if not valid:
            return JsonResponse({"error": form_errors(form)}, status=400)
        selected = form.filter(Alert.objects.order_by(*ORDERING))
        if "page" in request.GET:
            return JsonResponse(alerts_page_json(selected, request.GET["page"]))
        as_of = timezone.now()
        rows = list(selected[:FEED_MAX_ALERTS])
        total = len(rows) if len(rows) < FEED_MAX_ALERTS else selected.count()
        body = {"alerts": [alert_json(alert) for alert in rows], "total": total, "as_of": format_ts(as_of)}
        return JsonResponse(body)
    selected = form.filter(Alert.objects.order_by(*ORDERING)) if valid else Alert.objects.none()
    page = Paginator(selected, ALERTS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "state_label": STATES[(form.cleaned_data.get("state") if valid else "") or DEFAULT_STATE][0],
        # Bad filters: the errors, and nothing live.
        "config": live_page_config(form, page, selected) if valid else None,
    }
    return render(request, "gateway/alerts.html", context, status=200 if valid else 400)


def alerts_page_json(selected: QuerySet[Alert], page_number: str) -> dict[str, Any]:
    """One page of the /alerts/ page as its script reads it again after a reconnect:
    {"alerts": [alert_json, ...], "total": int, "page": int, "num_pages": int, "newest": newest_json,
    "as_of": ts}, the page number corrected as the HTML page corrects it."""
    as_of = timezone.now()
    page = Paginator(selected, ALERTS_PER_PAGE).get_page(page_number)
    return {
        "alerts": [alert_json(alert) for alert in page],
        "total": page.paginator.count,
        "page": page.number,
        "num_pages": page.paginator.num_pages,
        "newest": newest_json(selected),
        "as_of": format_ts(as_of),
    }


def newest_json(selected: QuerySet[Alert]) -> dict[str, str] | None:
    """{"id", "raised_at"} of the newest selected alert: a later page tells new alerts by it."""
    newest = selected.values_list("id", "raised_at").first()
    return None if newest is None else {"id": str(newest[0]), "raised_at": format_ts(newest[1])}


def live_page_config(form: AlertFilterForm, page: Page, selected: QuerySet[Alert]) -> dict[str, Any]:
    """What alerts_page.js needs to keep the page live: its socket, the page's alerts, its filters."""
    return {
        "ws_path": ALERTS_WS_PATH,
        "alerts": [alert_json(alert) for alert in page],
        "filter": form.live_filter(),
        "page": page.number,
        "per_page": ALERTS_PER_PAGE,
        "total": page.paginator.count,
        # The first page shows the newest itself; a later one compares it after a reconnect.
        "newest": newest_json(selected) if page.number > 1 else None,
        "severity_labels": dict(AlertSeverity.choices),
        "ack_url": reverse("gateway:acknowledge_alert", args=[ALERT_ID_PLACEHOLDER]),
        "alert_id_placeholder": str(ALERT_ID_PLACEHOLDER),
        "charge_point_url": reverse("gateway:charge_point", args=[SLUG_PLACEHOLDER]),
        "slug_placeholder": SLUG_PLACEHOLDER,
    }


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
