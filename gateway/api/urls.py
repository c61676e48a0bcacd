"""/api/v1/: the schema, its interactive docs (served from our own static files) and the resources.

Swagger UI only: ReDoc needs Google Fonts, a blob: worker and a logo from its CDN, none of which an
air-gapped site or our Content-Security-Policy allows.
"""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from gateway.api import alerts, commands, fleet, history, pipeline, sessions, sites, stream

app_name = "api"
urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script as a file: the Content-Security-Policy allows no inline script.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    *fleet.urlpatterns,
    *history.urlpatterns,
    *sessions.urlpatterns,
    *alerts.urlpatterns,
    *commands.urlpatterns,
    *pipeline.urlpatterns,
    *sites.urlpatterns,
    *stream.urlpatterns,
]
