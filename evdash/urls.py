"""Top-level URL configuration."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, include, path

from gateway.health import views as health_views


def account_urlpatterns(password_reset: bool) -> list[URLPattern]:
    """Login, logout and password change; password reset only when a mail server is configured.

    Without mail, the reset pages would promise a message that is never sent: they do not exist,
    and so neither do the links to them (the login page and the admin look the names up).
    """
    return [
        pattern
        for pattern in auth_urls.urlpatterns
        if password_reset or not (pattern.name or "").startswith("password_reset")
    ]


admin_password_reset = (
    [path("admin/password_reset/", auth_views.PasswordResetView.as_view(), name="admin_password_reset")]
    if settings.PASSWORD_RESET_ENABLED
    else []
)

urlpatterns = [
    *admin_password_reset,
    path("admin/", admin.site.urls),
    path("accounts/", include(account_urlpatterns(settings.PASSWORD_RESET_ENABLED))),
    path("api/v1/", include("gateway.api.urls")),
    # Health and metrics of the web process (README, Integrations): no login for the two probes.
    path("healthz", health_views.healthz, name="healthz"),
    path("readyz", health_views.readyz, name="readyz"),
    path("metrics", health_views.metrics, name="metrics"),
    path("", include("gateway.urls")),
]
