"""manage.py runconsumer: Kafka → latest state + live push to the dashboards."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway import services
from gateway.runtime import configure_verbosity, run_until_stopped


class Command(BaseCommand):
    help = "Consume telemetry from Kafka (as a consumer group member), store it and push it live."

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        if backend.endswith("InMemoryChannelLayer"):
            raise CommandError(
                "runconsumer on its own needs a shared channel layer (set REDIS_URL); in the "
                "embedded mode `manage.py demo` runs the consumer inside the web server process."
            )
        try:
            run_until_stopped(services.run_consumer)
        except Exception as exc:
            # run_consumer logged the traceback; the exit status and this line tell the supervisor.
            raise CommandError(f"runconsumer failed: {type(exc).__name__}: {exc}") from exc
