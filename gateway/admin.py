"""Admin: manage sites, charge points and device profiles (with their registers inline)."""

from django.contrib import admin

from gateway.models import ChargePoint, DeviceProfile, LatestTelemetry, Register, Site, StatusCode


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


class RegisterInline(admin.TabularInline):
    model = Register
    extra = 0
    fields = [
        "name",
        "function",
        "address",
        "data_type",
        "length",
        "bit",
        "byte_order",
        "scale",
        "offset",
        "unit",
        "role",
        "access",
        "write_min",
        "write_max",
        "poll_group",
    ]


class StatusCodeInline(admin.TabularInline):
    model = StatusCode
    extra = 0


@admin.register(DeviceProfile)
class DeviceProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "vendor", "model"]
    search_fields = ["name", "slug", "vendor", "model"]
    list_filter = ["vendor"]
    inlines = [RegisterInline, StatusCodeInline]


@admin.register(LatestTelemetry)
class LatestTelemetryAdmin(admin.ModelAdmin):
    list_display = ["charge_point", "source_ts", "received_at"]
    readonly_fields = ["charge_point", "record", "source_ts", "received_at"]

    def has_add_permission(self, request) -> bool:
        return False
