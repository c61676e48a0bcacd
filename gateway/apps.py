"""App configuration for the gateway."""

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gateway"
    verbose_name = "EV charging gateway"

    def ready(self) -> None:
        # Signal receivers: logging out closes the session's live sockets.
        from gateway.live import signals  # noqa: F401
