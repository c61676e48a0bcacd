"""/api/v1/: the schema, its interactive docs (served from our own static files) and the resources."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from gateway.api import alerts, commands, fleet, history, pipeline, sessions, stream

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script as a file: the Content-Security-Policy allows no inline script.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    *fleet.urlpatterns,
    *history.urlpatterns,
    *sessions.urlpatterns,
    *alerts.urlpatterns,
    *commands.urlpatterns,
    *pipeline.urlpatterns,
    *stream.urlpatterns,
]
