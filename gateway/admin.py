"""Admin: manage sites, charge points and device profiles (with their registers inline)."""

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from gateway.choices import PollGroup
from gateway.modbus.planner import plan_reads
from gateway.models import ChargePoint, DeviceProfile, LatestTelemetry, Register, Site, StatusRule
from gateway.profiles.spec import ProfileFormatError
from gateway.profiles.store import export_profile_json, load_spec, parse_profile_json, save_spec
from gateway.profiles.validate import overlapping


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "address"]
    search_fields = ["name", "slug", "address"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(ChargePoint)
class ChargePointAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "site",
        "host",
        "port",
        "unit_id",
        "profile",
        "poll_interval_ms",
        "enabled",
    ]
    list_filter = ["enabled", "site", "profile"]
    list_editable = ["enabled"]
    search_fields = ["name", "slug", "host"]
    prepopulated_fields = {"slug": ["name"]}
    list_select_related = ["site", "profile"]
    actions = ["enable", "disable"]

    @admin.action(description="Enable polling of the selected charge points")
    def enable(self, request, queryset) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable polling of the selected charge points")
    def disable(self, request, queryset) -> None:
        queryset.update(enabled=False)


class RegisterFormSet(BaseInlineFormSet):
    """Checks what no single register can: names, roles and addresses shared by two registers."""

    def clean(self) -> None:
        super().clean()
        specs = [
            form.instance.to_spec()
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE") and form.instance.address is not None
        ]
        problems = [
            f"Registers {a.name!r} ({a.address}..{a.address + a.count - 1}) and {b.name!r} "
            f"({b.address}..{b.address + b.count - 1}) overlap."
            for a, b in overlapping(specs)
        ]
        if problems:
            raise ValidationError(problems)


class RegisterInline(admin.TabularInline):
    model = Register
    formset = RegisterFormSet
    extra = 0
    fields = [
        "name", "function", "address", "data_type", "length", "bit", "mask", "byte_order", "encoding",
        "scale", "offset", "unit", "role", "access", "write_min", "write_max", "poll_group",
        "unavailable", "unit_id",
    ]  # fmt: skip


class StatusRuleFormSet(BaseInlineFormSet):
    """Status rules must name a register of the profile being saved (read from the same form post)."""

    def clean(self) -> None:
        super().clean()
        names = _posted_register_names(self.data)
        problems = [
            f"Status rule {form.cleaned_data['register']}={form.cleaned_data['code']} names no register "
            "of this profile."
            for form in self.forms
            if form.cleaned_data
            and not form.cleaned_data.get("DELETE")
            and form.cleaned_data.get("register") not in names
        ]
        if problems:
            raise ValidationError(problems)


def _posted_register_names(data: Any) -> set[str]:
    """Register names in the registers inline of the same POST, minus the ones being deleted."""
    names = set()
    for key, value in data.items():
        if key.startswith("registers-") and key.endswith("-name") and value:
            prefix = key.removesuffix("-name")
            if not data.get(f"{prefix}-DELETE"):
                names.add(value)
    return names


class StatusRuleInline(admin.TabularInline):
    model = StatusRule
    formset = StatusRuleFormSet
    extra = 0
    fields = ["position", "register", "code", "iec61851_state", "status", "description"]


class ProfileImportForm(forms.Form):
    file = forms.FileField(help_text="A profile JSON file (format: docs/profiles.md).")


@admin.register(DeviceProfile)
class DeviceProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "vendor", "model", "register_count", "read_count"]
    search_fields = ["name", "slug", "vendor", "model"]
    list_filter = ["vendor"]
    inlines = [RegisterInline, StatusRuleInline]
    actions = ["export_json"]
    change_list_template = "admin/gateway/deviceprofile/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("registers", "status_rules")

    @admin.display(description="registers")
    def register_count(self, profile: DeviceProfile) -> int:
        return len(profile.registers.all())

    @admin.display(description="reads per poll")
    def read_count(self, profile: DeviceProfile) -> int:
        return len(plan_reads(load_spec(profile), (PollGroup.FAST,)))

    def get_urls(self) -> list:
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="gateway_deviceprofile_import"),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Upload a profile JSON file; a bad file gets a clear form error and changes nothing."""
        if not self.has_add_permission(request) or not self.has_change_permission(request):
            raise PermissionDenied
        form = ProfileImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                spec = parse_profile_json(upload.read(), origin=upload.name)
            except ProfileFormatError as exc:
                form.add_error("file", str(exc))
            else:
                profile = save_spec(spec, DeviceProfile, Register, StatusRule)
                self.message_user(request, f"Imported profile {spec.slug} ({len(spec.registers)} registers).")
                return redirect("admin:gateway_deviceprofile_change", profile.pk)
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta,
                   "title": "Import device profile"}  # fmt: skip
        return TemplateResponse(request, "admin/gateway/deviceprofile/import.html", context)

    @admin.action(description="Export the selected profiles as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        specs = [load_spec(profile) for profile in queryset]
        body = (
            export_profile_json(specs[0])
            if len(specs) == 1
            else json.dumps([spec.to_dict() for spec in specs], indent=2, ensure_ascii=False)
        )
        name = f"{specs[0].slug}.json" if len(specs) == 1 else "profiles.json"
        response = HttpResponse(body, content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


@admin.register(LatestTelemetry)
class LatestTelemetryAdmin(admin.ModelAdmin):
    list_display = ["charge_point", "source_ts", "received_at"]
    readonly_fields = ["charge_point", "record", "source_ts", "received_at"]

    def has_add_permission(self, request) -> bool:
        return False
