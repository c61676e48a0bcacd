"""Dashboard pages."""

from django.urls import path

from gateway import views

app_name = "gateway"
urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("chargepoints/<slug:slug>/", views.charge_point, name="charge_point"),
    path("chargepoints/<slug:slug>/commands/", views.send_command, name="send_command"),
    path("commands/<uuid:command_id>/", views.command, name="command"),
]
