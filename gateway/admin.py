"""Admin: manage sites (with their load management and meter), charge points and device profiles
(with their registers inline), alert rules; read the alerts, the command and override audits, the
site samples and the site control leases."""

import json
import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.http import content_disposition_header

import gateway.api.admin  # noqa: F401 (registers the API token admin)
from gateway.choices import Access, PollGroup
from gateway.modbus.pacing import SLOW_GROUP_INTERVAL_S, Pacing, poll_time
from gateway.modbus.planner import plan_reads
from gateway.models import (
    Alert,
    AlertRule,
    ChargePoint,
    ChargingSession,
    Command,
    DeviceProfile,
    LatestTelemetry,
    Register,
    Site,
    StatusRule,
)
from gateway.models.sitecontrol import AllocationOverride, SiteControlLease, SiteSample
from gateway.profiles.spec import CommandSpec, Heartbeat, ProfileFormatError, RegisterSpec, entries_from_json
from gateway.profiles.store import (
    charger_profiles,
    export_profile_json,
    import_profile,
    load_spec,
    meter_profiles,
    read_profile_bytes,
)
from gateway.profiles.validate import command_register_problems, heartbeat_register_problems, overlapping
from gateway.telemetry import schema as telemetry_schema


def pacing_warnings(charge_point: ChargePoint) -> list[str]:
    """What the admin warns about (but saves): a disabled charge point whose poll cannot fit its
    interval (enabling it will be refused), and a slow-group poll that overruns the interval."""
    problem = charge_point.pacing_problem()
    if problem:
        return [f"{charge_point.slug} is disabled; enabling it will be refused until this is fixed. {problem}"]
    needed = charge_point.poll_time()
    if needed is None or not needed.slow_reads:
        return []
    with_slow_ms = needed.ms + needed.slow_ms
    if with_slow_ms <= charge_point.poll_interval_ms:
        return []
    return [
        f"{charge_point.slug}: every {SLOW_GROUP_INTERVAL_S / 60:.0f} min the slow group makes one poll take "
        f"{with_slow_ms / 1000:.1f} s, longer than the {charge_point.poll_interval_ms / 1000:g} s poll interval, "
        "so the poll after it is skipped. Lengthen the interval or relax the pacing if that matters."
    ]


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    """A site, its connection limit (load management) and its optional live meter; Site.clean checks them."""

    list_display = ["name", "slug", "address", "limit_shown", "meter_shown"]
    search_fields = ["name", "slug", "address"]
    prepopulated_fields = {"slug": ["name"]}
    list_select_related = ["meter_profile"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "address"]}),
        (
            "Load management",
            {
                "description": "Share the site's grid connection among its chargers (blank limit: no load "
                "management). A limit below the chargers' minimums is allowed: the lowest priorities pause.",
                "fields": [
                    ("limit_a", "limit_kw"),
                    "control_period_s",
                    ("base_load_a", "margin_a"),
                    ("failsafe_current_a", "failsafe_timeout_s"),
                ],
            },
        ),
        (
            "Site meter",
            {
                "description": "Optional: a Modbus meter at the connection, read every second through a meter "
                "profile (e.g. Eastron SDM630). Without one the draw is the chargers' sum plus the base load.",
                "fields": ["meter_profile", ("meter_host", "meter_port", "meter_unit_id"), "meter_stale_s"],
            },
        ),
    ]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "meter_profile":
            kwargs["queryset"] = meter_profiles()  # a charger's profile is not a meter's (validate.is_meter_profile)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="limit", ordering="limit_a")
    def limit_shown(self, site: Site) -> str:
        if site.limit_a is None:
            return "no load management"
        return f"{site.limit_a:g} A" + (f" / {site.limit_kw:g} kW" if site.limit_kw is not None else "")

    @admin.display(description="meter", ordering="meter_host")
    def meter_shown(self, site: Site) -> str:
        if site.meter_profile is None:
            return ""
        return f"{site.meter_profile.slug} at {site.meter_host}:{site.meter_port}/{site.meter_unit_id}"


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
        "poll_at_pace",
        "priority",
        "wiring",
        "enabled",
    ]
    list_filter = ["enabled", "site", "profile", "wiring"]
    list_editable = ["enabled"]
    search_fields = ["name", "slug", "host"]
    prepopulated_fields = {"slug": ["name"]}
    list_select_related = ["site", "profile"]
    readonly_fields = ["poll_at_pace"]
    actions = ["enable", "disable"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "site", "profile", "enabled"]}),
        ("Modbus", {"fields": [("host", "port", "unit_id"), "poll_interval_ms", ("request_gap_ms", "write_gap_ms"),
                               "poll_at_pace"]}),
        (
            "Load management",
            {
                "description": "How this charger shares its site's limit (used when the site has one).",
                "fields": ["priority", "wiring", ("min_session_current_a", "max_current_a")],
            },
        ),
    ]  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("profile__registers", "profile__status_rules")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "profile":
            kwargs["queryset"] = charger_profiles()  # a meter's profile reads no charger
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="one poll at its pacing")
    def poll_at_pace(self, charge_point: ChargePoint) -> str:
        """How long one poll takes at the pacing this charge point is polled with."""
        needed = charge_point.poll_time()
        if needed is None:
            return "-"
        overridden = charge_point.request_gap_ms is not None or charge_point.write_gap_ms is not None
        text = needed.describe() + (" (pacing set on this charge point)" if overridden else "")
        if needed.ms > charge_point.poll_interval_ms:
            text += f"; does not fit the {charge_point.poll_interval_ms / 1000:g} s poll interval"
        return text

    def save_model(self, request: HttpRequest, obj: ChargePoint, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        for warning in pacing_warnings(obj):
            self.message_user(request, warning, messages.WARNING)

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
        "scale", "offset", "unit", "role", "access", "write_min", "write_max", "write_values", "poll_group",
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
    return set(_posted_registers(data))


def _posted_registers(data: Any) -> dict[str, str]:
    """Register name → access, from the registers inline of the same POST, minus deleted ones."""
    registers = {}
    for key, value in data.items():
        if key.startswith("registers-") and key.endswith("-name") and value:
            prefix = key.removesuffix("-name")
            if not data.get(f"{prefix}-DELETE"):
                registers[value] = data.get(f"{prefix}-access", "")
    return registers


_RegisterRowForm = forms.modelform_factory(Register, fields=RegisterInline.fields)


def _posted_register_specs(data: Any) -> dict[str, RegisterSpec]:
    """The registers inline of the same POST as specs, by name (deleted rows and rows with errors left out:
    the inline itself reports those)."""
    specs = {}
    for key, name in data.items():
        if key.startswith("registers-") and key.endswith("-name") and name:
            prefix = key.removesuffix("-name")
            row = _RegisterRowForm(data, prefix=prefix)
            if not data.get(f"{prefix}-DELETE") and row.is_valid():
                specs[name] = row.instance.to_spec()
    return specs


class DeviceProfileForm(forms.ModelForm):
    """Heartbeats and commands must name suitable registers of the registers inline posted with them.

    The model checks their shape (DeviceProfile.clean); which registers exist, and what they allow,
    is only known from the same POST, as for the status rules.
    """

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self._check_heartbeat_registers(cleaned)
        self._check_command_registers(cleaned)
        return cleaned

    def _check_heartbeat_registers(self, cleaned: dict[str, Any]) -> None:
        try:
            heartbeats = entries_from_json(Heartbeat, cleaned.get("heartbeats"), "heartbeats")
        except ProfileFormatError:
            return  # DeviceProfile.clean says what is wrong with the shape
        registers = _posted_registers(self.data)
        writable = {name for name, access in registers.items() if access in (Access.READ_WRITE, Access.WRITE)}
        problems = heartbeat_register_problems(heartbeats, set(registers), writable)
        if problems:
            self.add_error("heartbeats", "; ".join(problems) + ".")

    def _check_command_registers(self, cleaned: dict[str, Any]) -> None:
        """Each command writes a writable posted register within its range and reads back a readable one."""
        commands = cleaned.get("commands")
        try:
            specs = entries_from_json(CommandSpec, [] if commands is None else commands, "commands")
        except ProfileFormatError:
            return  # DeviceProfile.clean says what is wrong with the shape
        problems = command_register_problems(specs, _posted_register_specs(self.data))
        if problems:
            self.add_error("commands", "; ".join(problems) + ".")


class StatusRuleInline(admin.TabularInline):
    model = StatusRule
    formset = StatusRuleFormSet
    extra = 0
    fields = ["position", "register", "match", "code", "iec61851_state", "status", "description"]


class ProfileImportForm(forms.Form):
    file = forms.FileField(help_text="A profile JSON file (format: docs/profiles.md).")


@admin.register(DeviceProfile)
class DeviceProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "vendor", "model", "register_count", "read_count", "poll_at_pace"]
    readonly_fields = ["poll_at_pace"]
    search_fields = ["name", "slug", "vendor", "model"]
    list_filter = ["vendor"]
    form = DeviceProfileForm
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

    @admin.display(description="one poll at the vendor's pacing")
    def poll_at_pace(self, profile: DeviceProfile) -> str:
        if profile.pk is None:
            return "-"
        try:
            spec = load_spec(profile)
        except ProfileFormatError:
            return "-"  # the form refused these values and shows them again with the reason
        return poll_time(spec, Pacing(spec.request_gap_ms, spec.write_gap_ms)).describe()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Once registers and pacing are saved, warn about charge points whose poll no longer fits."""
        super().save_related(request, form, formsets, change)
        # Fresh from the database: the form's instance holds the registers as they were before the edit.
        profile = DeviceProfile.objects.prefetch_related("registers", "status_rules").get(pk=form.instance.pk)
        for charge_point in profile.charge_points.filter(enabled=True):
            charge_point.profile = profile
            problem = charge_point.pacing_problem()
            if problem:
                self.message_user(request, f"Charge point {charge_point.slug}: {problem}", messages.WARNING)

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
                # The same checks as `profiles import` and the admin form; nothing saved unless all pass.
                profile, _ = import_profile(read_profile_bytes(upload, upload.name), origin=upload.name)
            except ProfileFormatError as exc:
                form.add_error("file", str(exc))
            else:
                self.message_user(request, f"Imported profile {profile.slug} ({profile.registers.count()} registers).")
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
        name = export_filename(specs[0].slug) if len(specs) == 1 else "profiles.json"
        response = HttpResponse(body, content_type="application/json")
        response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=name)
        return response


def export_filename(slug: str) -> str:
    """A download name that is only letters, digits, '-', '_' and '.', whatever a stored slug holds.

    Slugs are validated on the way in, but a row written before that (or by the ORM) must still not
    put quotes, line breaks or a path into the Content-Disposition header.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", slug).strip("_")[:80]
    return f"{stem or 'profile'}.json"


@admin.register(LatestTelemetry)
class LatestTelemetryAdmin(admin.ModelAdmin):
    list_display = ["charge_point", "source_ts", "received_at"]
    readonly_fields = ["charge_point", "record", "source_ts", "received_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Command)
class CommandAdmin(admin.ModelAdmin):
    """The audit of operator commands: read-only, whoever looks (rows are written by the command flow only)."""

    list_display = [
        "created_at",
        "charge_point_slug",
        "action",
        "value",
        "username",
        "status",
        "reason_shown",
        "latency_shown",
    ]
    list_filter = ["status", "action", "site_slug", "created_at"]
    search_fields = ["charge_point_slug", "username"]
    date_hierarchy = "created_at"

    @admin.display(description="reason", ordering="reason_code")
    def reason_shown(self, command: Command) -> str:
        if not command.reason_code:
            return ""
        return f"{command.get_reason_code_display()}: {command.reason}" if command.reason else command.reason_code

    @admin.display(description="latency", ordering="latency_ms")
    def latency_shown(self, command: Command) -> str:
        return "" if command.latency_ms is None else f"{command.latency_ms:.0f} ms"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Command | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Command | None = None) -> bool:
        return False


def telemetry_value_choices() -> list[tuple[str, str]]:
    """The values a threshold rule can watch: the telemetry record's `values` (its JSON schema)."""
    names = telemetry_schema()["properties"]["values"]["properties"]
    return [("", "---------"), *((name, name) for name in names)]


class AlertRuleForm(forms.ModelForm):
    """A threshold rule picks its value from the record's values: a typo would watch nothing, silently.
    The rest of the checks are the model's (AlertRule.clean, run by the form's model validation)."""

    value = forms.TypedChoiceField(
        choices=telemetry_value_choices, required=False, help_text="Threshold rules: the telemetry value watched."
    )

    class Meta:
        model = AlertRule
        # The admin adds the fieldsets' other fields, through its formfield_overrides.
        fields = ["value"]


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    # A webhook URL typed without a scheme is taken as https (Django 6's default, without the warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ["name", "kind", "enabled", "severity", "condition", "hold_s", "scope", "notifies"]
    list_filter = ["enabled", "kind", "severity", "site"]
    list_editable = ["enabled"]
    search_fields = ["name", "value"]
    list_select_related = ["site", "charge_point"]
    autocomplete_fields = ["site", "charge_point"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "enabled", "severity"]}),
        ("Condition", {"fields": ["value", "comparator", "threshold", "hold_s", "hysteresis"]}),
        ("Scope (neither: every charge point)", {"fields": ["site", "charge_point"]}),
        ("Notifications", {"fields": ["notify_emails", "webhook_url"]}),
    ]

    @admin.display(description="condition")
    def condition(self, rule: AlertRule) -> str:
        if rule.value and rule.comparator and rule.threshold is not None:
            return f"{rule.value} {rule.comparator} {rule.threshold:g}"
        if rule.threshold is not None:
            return f"threshold {rule.threshold:g}"
        return ""

    @admin.display(description="scope")
    def scope(self, rule: AlertRule) -> str:
        if rule.charge_point_id:
            return f"charge point {rule.charge_point.slug}"
        if rule.site_id:
            return f"site {rule.site.slug}"
        return "every charge point"

    @admin.display(description="notifies")
    def notifies(self, rule: AlertRule) -> str:
        emails = [address for address in re.split(r"[\s,]+", rule.notify_emails) if address]
        parts = [f"{len(emails)} e-mail{'s' if len(emails) != 1 else ''}"] if emails else []
        if rule.webhook_url:
            parts.append("webhook")
        return ", ".join(parts)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the service only: the admin shows them and changes nothing."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    """The alerts as raised by the engine: acknowledged on the dashboard (who and when are kept there)."""

    list_display = [
        "raised_at", "severity", "rule_name", "charge_point_slug", "site_slug", "message", "cleared_at",
        "acknowledged_at", "acknowledged_by_name",
    ]  # fmt: skip
    list_filter = [
        "severity", "kind", "site_slug", ("cleared_at", admin.EmptyFieldListFilter),
        ("acknowledged_at", admin.EmptyFieldListFilter), "raised_at",
    ]  # fmt: skip
    search_fields = ["rule_name", "charge_point_slug", "message", "subject"]
    date_hierarchy = "raised_at"


@admin.register(ChargingSession)
class ChargingSessionAdmin(ReadOnlyAdmin):
    """Charging sessions as the history consumer derived them from the telemetry: read-only."""

    list_display = [
        "started_at", "charge_point_slug", "site_slug", "ended_at", "end_reason", "energy_kwh_shown",
        "peak_power_kw_shown", "meter",
    ]  # fmt: skip
    list_filter = ["site_slug", "end_reason", "meter", ("ended_at", admin.EmptyFieldListFilter), "started_at"]
    search_fields = ["charge_point_slug", "site_slug"]
    date_hierarchy = "started_at"

    @admin.display(description="energy", ordering="energy_wh")
    def energy_kwh_shown(self, session: ChargingSession) -> str:
        return f"{session.energy_wh / 1000:.2f} kWh"

    @admin.display(description="peak power", ordering="peak_power_w")
    def peak_power_kw_shown(self, session: ChargingSession) -> str:
        return "" if session.peak_power_w is None else f"{session.peak_power_w / 1000:.1f} kW"


@admin.register(AllocationOverride)
class AllocationOverrideAdmin(ReadOnlyAdmin):
    """The audit of allocation overrides: created and cancelled from the site page or the API only."""

    list_display = [
        "created_at", "charge_point_slug", "site_slug", "current_shown", "expires_at", "ended_at", "ended_by",
        "username", "via", "reason",
    ]  # fmt: skip
    list_filter = ["site_slug", "via", ("ended_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["charge_point_slug", "site_slug", "username", "reason"]
    date_hierarchy = "created_at"

    @admin.display(description="current", ordering="current_a")
    def current_shown(self, override: AllocationOverride) -> str:
        return f"{override.current_a:g} A"


@admin.register(SiteSample)
class SiteSampleAdmin(ReadOnlyAdmin):
    """What each site's controller did, one row per control period (the site page's history)."""

    list_display = ["at", "site_slug", "state", "limit_a", "draw_a", "allocated_a"]
    list_filter = ["site_slug", "state", "at"]
    search_fields = ["site_slug"]
    date_hierarchy = "at"


@admin.register(SiteControlLease)
class SiteControlLeaseAdmin(ReadOnlyAdmin):
    """Which poller controls which site (taken and renewed by the pollers only)."""

    list_display = ["site", "poller_id", "host", "pid", "renewed_at"]
    search_fields = ["site__slug", "poller_id", "host"]
    list_select_related = ["site"]
