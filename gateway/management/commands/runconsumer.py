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
        run_until_stopped(services.run_consumer)
