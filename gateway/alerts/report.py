"""What the alert pages, the fleet page's feed and any later API read of the alerts: the states an
operator filters by and the filters themselves. Views render these; none keeps a copy.
"""

from typing import Any

from django import forms
from django.db.models import Q, QuerySet

from gateway.choices import AlertSeverity
from gateway.models import Alert, Site

# Each state: its label, and the alert fields of which at least one is unset (none: every alert).
# The database filter (STATES) and the /alerts/ page's live filter (AlertFilterForm.live_filter) both
# come from here, so the page's script holds no second idea of what "needs attention" means.
STATE_DEFINITIONS = {
    # Still active, or cleared before anyone acknowledged it: what an operator has not dealt with.
    "attention": ("Needs attention", ("cleared_at", "acknowledged_at")),
    "active": ("Active", ("cleared_at",)),
    "unacknowledged": ("Unacknowledged", ("acknowledged_at",)),
    "all": ("All", ()),
}
DEFAULT_STATE = "attention"
# The filters that compare an alert's field with the value chosen: the form's field names are the
# alert message's keys (gateway.alerts.messages.alert_json).
EQUAL_FILTERS = ("severity", "site", "charge_point")


def any_unset(fields: tuple[str, ...]) -> Q:
    """Alerts with at least one of `fields` unset (no fields: every alert)."""
    condition = Q()
    for field in fields:
        condition |= Q(**{f"{field}__isnull": True})
    return condition


STATES = {key: (label, any_unset(fields)) for key, (label, fields) in STATE_DEFINITIONS.items()}


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

    def live_filter(self) -> dict[str, Any]:
        """The valid form's filters as a page applies them to an alert message (alert_json):
        {"any_unset": [field, ...], "equal": {field: value, ...}}, the same test as filter()'s."""
        data = self.cleaned_data
        return {
            "any_unset": list(STATE_DEFINITIONS[data["state"] or DEFAULT_STATE][1]),
            "equal": {name: data[name] for name in EQUAL_FILTERS if data[name]},
        }
