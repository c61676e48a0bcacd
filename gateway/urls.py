"""Dashboard pages."""

from django.urls import path

from gateway import alert_views, history_views, pipeline_views, session_views, site_views, views

app_name = "gateway"
urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("fleet/power-history/", history_views.fleet_power_history, name="fleet_power_history"),
    path("chargepoints/<slug:slug>/", views.charge_point, name="charge_point"),
    path("chargepoints/<slug:slug>/history/", history_views.charge_point_history, name="charge_point_history"),
    path("chargepoints/<slug:slug>/commands/", views.send_command, name="send_command"),
    path("commands/<uuid:command_id>/", views.command, name="command"),
    path("sessions/", session_views.sessions, name="sessions"),
    path("sessions/export.csv", session_views.sessions_csv, name="sessions_csv"),
    path("sessions/<int:session_id>/", session_views.session_detail, name="session_detail"),
    path("alerts/", alert_views.alerts, name="alerts"),
    path("alerts/<uuid:alert_id>/acknowledge/", alert_views.acknowledge, name="acknowledge_alert"),
    path("pipeline/", pipeline_views.pipeline, name="pipeline"),
    path("sites/", site_views.sites, name="sites"),
    path("sites/<slug:slug>/", site_views.site, name="site"),
    path("sites/<slug:slug>/history/", site_views.site_history, name="site_history"),
    path("sites/<slug:slug>/overrides/", site_views.create_override, name="site_overrides"),
    path(
        "sites/<slug:slug>/overrides/<uuid:override_id>/cancel/",
        site_views.cancel_override,
        name="cancel_site_override",
    ),
    path("fleet/site-headroom/", site_views.site_headroom, name="fleet_site_headroom"),
]
