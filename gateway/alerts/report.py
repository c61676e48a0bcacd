"""What the alert pages, the fleet page's feed and any later API read of the alerts: the states an
operator filters by and the filters themselves. Views render these; none keeps a copy.
"""

from typing import Any

from django import forms
from django.db.models import Q, QuerySet

from gateway.choices import AlertSeverity
from gateway.models import Alert, Site

STATES = {
    # Still active, or cleared before anyone acknowledged it: what an operator has not dealt with.
    "attention": ("Needs attention", Q(cleared_at__isnull=True) | Q(acknowledged_at__isnull=True)),
    "active": ("Active", Q(cleared_at__isnull=True)),
    "unacknowledged": ("Unacknowledged", Q(acknowledged_at__isnull=True)),
    "all": ("All", Q()),
}
DEFAULT_STATE = "attention"


class AlertFilterForm(forms.Form):
    """The filters of /alerts/ (all optional: an empty one does not filter)."""

    state = forms.ChoiceField(choices=[(key, label) for key, (label, _) in STATES.items()], required=False)
    severity = forms.ChoiceField(choices=[("", "Any severity"), *AlertSeverity.choices], required=False)
    site = forms.ChoiceField(required=False)
    charge_point = forms.SlugField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sites that exist, and those only old alerts still name (the alert keeps the slug as text).
        names = dict(Site.objects.values_list("slug", "name"))
        for slug in Alert.objects.exclude(site_slug="").values_list("site_slug", flat=True).distinct():
            names.setdefault(slug, slug)
        self.fields["site"].choices = [("", "All sites"), *sorted(names.items(), key=lambda item: item[1].lower())]

    def filter(self, alerts: QuerySet[Alert]) -> QuerySet[Alert]:
        """`alerts` narrowed to the valid form's filters."""
        data = self.cleaned_data
        alerts = alerts.filter(STATES[data["state"] or DEFAULT_STATE][1])
        if data["severity"]:
            alerts = alerts.filter(severity=data["severity"])
        if data["site"]:
            alerts = alerts.filter(site_slug=data["site"])
        if data["charge_point"]:
            alerts = alerts.filter(charge_point_slug=data["charge_point"])
        return alerts
