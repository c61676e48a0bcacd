"""WebSocket URL routes."""

from django.urls import path

from gateway.live.consumers import ChargePointConsumer, FleetConsumer

websocket_urlpatterns = [
    path("ws/fleet/", FleetConsumer.as_asgi()),
    path("ws/chargepoints/<slug:slug>/", ChargePointConsumer.as_asgi()),
]
