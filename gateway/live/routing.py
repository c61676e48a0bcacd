"""WebSocket URL routes; the last one refuses every other path without an error in the log."""

from django.urls import path, re_path

from gateway.live.consumers import (
    AlertsConsumer,
    ChargePointConsumer,
    FleetConsumer,
    SiteConsumer,
    UnknownPathConsumer,
)

websocket_urlpatterns = [
    path("ws/fleet/", FleetConsumer.as_asgi()),
    path("ws/chargepoints/<slug:slug>/", ChargePointConsumer.as_asgi()),
    path("ws/sites/<slug:slug>/", SiteConsumer.as_asgi()),
    path("ws/alerts/", AlertsConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
