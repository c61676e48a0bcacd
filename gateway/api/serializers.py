"""Fleet serializers: sites, profiles, charge points and their latest telemetry.

Charge point writes are validated by the admin's own ModelForm (model clean(), field validators,
the unique Modbus endpoint), so the API accepts exactly what the admin accepts, with its messages.
"""

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import F, QuerySet
from django.forms.models import model_to_dict
from django.http import HttpRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from gateway.models import ChargePoint, DeviceProfile, Site
from gateway.profiles.store import load_spec
from gateway.readings import NO_DATA, is_stale, stale_after_ms, summary_bucket
from gateway.telemetry import format_ts


class UtcDateTimeField(serializers.DateTimeField):
    """ISO 8601 UTC with milliseconds and a Z: the same form as the telemetry records' timestamps."""

    def to_representation(self, value: datetime | None) -> str | None:
        return format_ts(value) if value is not None else None


class SiteSerializer(serializers.ModelSerializer):
    """A site and how many charge points it has."""

    charge_points = serializers.IntegerField(source="charge_point_count", read_only=True)

    class Meta:
        model = Site
        fields = ["slug", "name", "address", "charge_points"]


class ProfileSerializer(serializers.ModelSerializer):
    """A device profile in a list: what it is, not its register map."""

    class Meta:
        model = DeviceProfile
        fields = ["slug", "name", "vendor", "model"]


class ProfileDetailSerializer(ProfileSerializer):
    """A device profile with its full register map: the same JSON as the admin's export."""

    spec = serializers.SerializerMethodField()

    class Meta(ProfileSerializer.Meta):
        fields = [*ProfileSerializer.Meta.fields, "source", "notes", "spec"]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_spec(self, profile: DeviceProfile) -> dict[str, Any]:
        return load_spec(profile).to_dict()


def admin_form_class(request: HttpRequest, instance: ChargePoint | None) -> type[forms.ModelForm]:
    """The ModelForm the admin builds for this user adding (instance None) or changing a charge point."""
    model_admin = admin.site.get_model_admin(ChargePoint)
    return model_admin.get_form(request, obj=instance, change=instance is not None)


class ChargePointSerializer(serializers.ModelSerializer):
    """A charge point; writes go through the admin's form, and its warnings come back with the answer."""

    site = serializers.SlugRelatedField(slug_field="slug", queryset=Site.objects.all())
    profile = serializers.SlugRelatedField(slug_field="slug", queryset=DeviceProfile.objects.all())
    endpoint = serializers.CharField(read_only=True)
    updated_at = UtcDateTimeField(read_only=True)

    class Meta:
        model = ChargePoint
        fields = [
            "slug",
            "name",
            "site",
            "profile",
            "host",
            "port",
            "unit_id",
            "endpoint",
            "poll_interval_ms",
            "request_gap_ms",
            "write_gap_ms",
            "enabled",
            "updated_at",
        ]
        # The admin's form checks uniqueness (slug, the Modbus endpoint) with the admin's messages.
        validators: list = []
        extra_kwargs = {"slug": {"validators": []}}

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for field in fields.values():
            # The admin's form runs the model's validators, with the admin's messages; the bounds
            # stay on the fields for the schema. Types (a number is a number) are still checked here.
            if not field.read_only:
                field.validators = []
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Run the admin's form over the charge point as it would be saved; its errors are ours."""
        instance: ChargePoint | None = self.instance
        data = model_to_dict(instance) if instance is not None else {}
        for name, value in attrs.items():
            data[name] = value.pk if isinstance(value, Site | DeviceProfile) else value
        if instance is None:
            # The model's defaults for what the request leaves out (the admin's form requires every
            # field it shows, load management's priority and wiring too; an absent checkbox would
            # mean False to a form).
            for field in ChargePoint._meta.concrete_fields:
                if field.name not in data and field.has_default():
                    data[field.name] = field.get_default()
        form = admin_form_class(self.context["request"], instance)(data=data, instance=instance)
        if not form.is_valid():
            errors = form.errors.get_json_data()
            raise serializers.ValidationError(
                {
                    "non_field_errors" if field == "__all__" else field: [error["message"] for error in field_errors]
                    for field, field_errors in errors.items()
                }
            )
        self.admin_form = form
        return attrs

    def create(self, validated_data: dict[str, Any]) -> ChargePoint:
        return self.admin_form.save()

    def update(self, instance: ChargePoint, validated_data: dict[str, Any]) -> ChargePoint:
        return self.admin_form.save()


class LatestTelemetrySerializer(serializers.Serializer):
    """A charge point's latest record with what the pages derive from it (readings.Reading).

    No age is sent: it changes every request and would defeat the ETag; clients subtract
    `source_ts` from their clock, and `stale` says what the server thinks at answer time.
    """

    charge_point = serializers.CharField(source="charge_point.slug")
    name = serializers.CharField(source="charge_point.name")
    site = serializers.CharField(source="charge_point.site.slug")
    enabled = serializers.BooleanField(source="charge_point.enabled")
    poll_interval_ms = serializers.IntegerField(source="charge_point.poll_interval_ms")
    stale_after_ms = serializers.IntegerField()
    source_ts = UtcDateTimeField(allow_null=True)
    stale = serializers.BooleanField()
    status = serializers.CharField(help_text="The record's operator status, or 'nodata' without a record.")
    summary_status = serializers.CharField(help_text="As the fleet summary counts it: 'stale' once stale.")
    record = serializers.JSONField(allow_null=True, help_text="The telemetry record (telemetry.v1 schema).")

    # The row each item is built from (latest_rows): a fleet page of 1,000 as plain rows instead of
    # 3,000 model instances and DRF's per-field walk, ~4x faster (docs/benchmarks.md, api).
    ROW = {
        "slug": "slug",
        "name": "name",
        "enabled": "enabled",
        "poll_interval_ms": "poll_interval_ms",
        "site_slug": F("site__slug"),
        "record": F("latest__record"),
        "source_ts": F("latest__source_ts"),
    }

    def to_representation(self, row: dict[str, Any]) -> dict[str, Any]:
        record, source_ts, interval_ms = row["record"], row["source_ts"], row["poll_interval_ms"]
        stale = is_stale(source_ts, self.context["now"], interval_ms)
        status = record["status"] if record else NO_DATA
        return {
            "charge_point": row["slug"],
            "name": row["name"],
            "site": row["site_slug"],
            "enabled": row["enabled"],
            "poll_interval_ms": interval_ms,
            "stale_after_ms": stale_after_ms(interval_ms),
            "source_ts": format_ts(source_ts) if source_ts is not None else None,
            "stale": stale,
            "status": status,
            "summary_status": summary_bucket(status, stale),
            "record": record,
        }


def latest_rows(queryset: QuerySet[ChargePoint]) -> QuerySet:
    """Charge points as the rows LatestTelemetrySerializer takes (with their latest record)."""
    plain = [name for name, source in LatestTelemetrySerializer.ROW.items() if isinstance(source, str)]
    computed = {name: source for name, source in LatestTelemetrySerializer.ROW.items() if not isinstance(source, str)}
    return queryset.values(*plain, **computed)
