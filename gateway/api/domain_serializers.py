"""The API's shapes for history, sessions, alerts and commands, and what their views share.

The alert and command shapes are the ones the pages, the live push and the Kafka messages already
use (gateway.alerts.messages.alert_json, gateway.commands.service.command_json): the serializers
here declare their fields for the OpenAPI schema and render through those functions, so there is
one shape per object, not a copy that drifts.
"""

from typing import Any

from django import forms
from rest_framework import exceptions, serializers

from gateway.alerts.messages import alert_json
from gateway.choices import OPERATOR_ACTIONS, AlertKind, AlertSeverity, CommandAction, CommandStatus, FailureReason
from gateway.commands.service import command_json
from gateway.models import Alert, ChargingSession, Command
from gateway.models.sessions import Meter, SessionEnd
from gateway.telemetry import format_ts


class InvalidQuery(exceptions.APIException):
    """A query parameter the API refuses (400, code "invalid"), with the reason the client is shown."""

    status_code = 400
    default_code = "invalid"
    default_detail = "The query is not valid."


def valid_filters(form: forms.Form) -> forms.Form:
    """The bound filter form (the page's own), or a 400 whose fields are the form's errors."""
    if not form.is_valid():
        errors = {("non_field_errors" if field == "__all__" else field): msgs for field, msgs in form.errors.items()}
        raise exceptions.ValidationError(errors)
    return form


class ApiErrorDetailSerializer(serializers.Serializer):
    status = serializers.IntegerField()
    code = serializers.CharField(help_text="e.g. not_authenticated, not_found, invalid, or a command's reason code.")
    message = serializers.CharField()
    fields = serializers.DictField(required=False, help_text="What was wrong with which parameter or field.")


class ApiErrorSerializer(serializers.Serializer):
    """Schema only: the API's one error body (gateway.api.errors.error_body)."""

    error = ApiErrorDetailSerializer()


# --- History (the charts' JSON) ---------------------------------------------------------------


class ChargePointHistorySerializer(serializers.Serializer):
    """Schema only: gateway.history.query.charge_point_series, plus the range asked for."""

    charge_point = serializers.SlugField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    range = serializers.CharField(help_text='"hour", "day", "week" (ending now) or "custom" (start/end).')
    source = serializers.ChoiceField(choices=["raw", "rollup"])
    bucket_s = serializers.FloatField(help_text="0: raw records; else the width of the buckets, s.")
    points = serializers.IntegerField()
    t = serializers.ListField(child=serializers.DateTimeField(), help_text="Record times, or bucket starts.")
    status = serializers.ListField(child=serializers.CharField(allow_null=True))
    values = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        help_text="Per value (power_w, current_l1_a, ...): the records' values, or the buckets' averages.",
    )
    min = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        required=False,
        help_text="Bucketed answers only: each bucket's minimum per value.",
    )
    max = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        required=False,
        help_text="Bucketed answers only: each bucket's maximum per value.",
    )
    last = serializers.DictField(allow_null=True, help_text='The newest record in the range: {"ts", "seq"}.')


class FleetPowerSerializer(serializers.Serializer):
    """Schema only: gateway.history.query.fleet_power_series over the window, plus what was asked."""

    t = serializers.ListField(child=serializers.DateTimeField(), help_text="Bucket starts (completed buckets).")
    power_w = serializers.ListField(child=serializers.FloatField(), help_text="Sum over charge points of their mean.")
    bucket_s = serializers.FloatField()
    window_s = serializers.FloatField()
    site = serializers.SlugField(allow_null=True)
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


# --- Sessions ---------------------------------------------------------------------------------


class SessionSerializer(serializers.Serializer):
    """One charging session (the page's row, machine-readable: W, Wh and s, not kW and text)."""

    id = serializers.IntegerField()
    charge_point = serializers.SlugField(source="charge_point_slug")
    site = serializers.CharField(source="site_slug")
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True, help_text="null while the session is open.")
    last_ts = serializers.DateTimeField(help_text="The last record applied to it.")
    open = serializers.BooleanField(source="is_open")
    duration_s = serializers.FloatField(help_text="Until it ended, or so far (to last_ts) while open.")
    energy_wh = serializers.FloatField()
    peak_power_w = serializers.FloatField(allow_null=True)
    end_reason = serializers.ChoiceField(choices=SessionEnd.choices, allow_null=True)
    meter = serializers.ChoiceField(choices=Meter.choices, allow_blank=True)

    def to_representation(self, instance: ChargingSession) -> dict[str, Any]:
        return {
            "id": instance.pk,
            "charge_point": instance.charge_point_slug,
            "site": instance.site_slug,
            "started_at": format_ts(instance.started_at),
            "ended_at": format_ts(instance.ended_at) if instance.ended_at else None,
            "last_ts": format_ts(instance.last_ts),
            "open": instance.is_open,
            "duration_s": round(instance.duration.total_seconds(), 3),
            "energy_wh": instance.energy_wh,
            "peak_power_w": instance.peak_power_w,
            "end_reason": instance.end_reason or None,
            "meter": instance.meter,
        }


# --- Alerts -----------------------------------------------------------------------------------


class AlertSerializer(serializers.Serializer):
    """An alert: its message as published on evdash.alerts (gateway.alerts.messages.alert_json)."""

    type = serializers.CharField(help_text='Always "alert".')
    schema_version = serializers.IntegerField()
    event = serializers.ChoiceField(choices=["raised", "cleared", "acknowledged"], help_text="What happened last.")
    id = serializers.UUIDField()
    rule = serializers.CharField()
    kind = serializers.ChoiceField(choices=AlertKind.choices)
    severity = serializers.ChoiceField(choices=AlertSeverity.choices)
    charge_point = serializers.SlugField()
    site = serializers.CharField()
    message = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    raised_at = serializers.DateTimeField()
    cleared_at = serializers.DateTimeField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    acknowledged_by = serializers.CharField(allow_null=True)

    def to_representation(self, instance: Alert) -> dict[str, Any]:
        return alert_json(instance)


# --- Commands ---------------------------------------------------------------------------------


class CommandSerializer(serializers.Serializer):
    """A command and its outcome: the page's shape (service.command_json) plus its site and origin."""

    id = serializers.UUIDField()
    charge_point = serializers.SlugField()
    site = serializers.CharField()
    action = serializers.ChoiceField(choices=CommandAction.choices)
    value = serializers.FloatField(allow_null=True, help_text="set_current_limit: the limit, A.")
    status = serializers.ChoiceField(choices=CommandStatus.choices, help_text="pending until the poller's result.")
    reason_code = serializers.ChoiceField(choices=FailureReason.choices, allow_null=True)
    reason = serializers.CharField(allow_null=True)
    read_back = serializers.FloatField(allow_null=True, help_text="What the charger showed after the write.")
    username = serializers.CharField()
    via = serializers.CharField(help_text="web, cli or api.")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    latency_ms = serializers.FloatField(allow_null=True)

    def to_representation(self, instance: Command) -> dict[str, Any]:
        return command_json(instance) | {"site": instance.site_slug, "via": instance.via}


class CommandRequestSerializer(serializers.Serializer):
    """What a client asks: an action and (for set_current_limit) a value in A.

    The action is not a choice here: the service refuses an unknown one with its reason, and audits
    the attempt, as it does for the page.
    """

    action = serializers.CharField(
        max_length=32,
        help_text=f"One of {', '.join(OPERATOR_ACTIONS)} (the failsafe actions are site load management's).",
    )
    value = serializers.FloatField(required=False, allow_null=True, help_text="set_current_limit: the limit, A.")


class CommandRefusalSerializer(serializers.Serializer):
    """Schema only: a refused command: the error (code = the reason code) and its audit row."""

    error = ApiErrorDetailSerializer()
    command = CommandSerializer(allow_null=True)
