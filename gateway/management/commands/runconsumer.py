"""manage.py runconsumer: Kafka → latest state, alerts, live push, history and sessions."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gateway import services, sinks
from gateway.runtime import WORKER_CHECKS, configure_verbosity, run_until_stopped


class Command(BaseCommand):
    requires_system_checks = WORKER_CHECKS  # not the URL conf (gateway/runtime.py)
    help = (
        "Consume telemetry from Kafka (as a member of its consumer groups): store the latest state, "
        "evaluate alerts and push live (group 'live'); store history and sessions (group 'history')."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--only",
            choices=sinks.GROUPS,
            help="Run one sink group only, e.g. to scale the history writers apart from the live push.",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve Prometheus /metrics, /healthz and /readyz on this port (README, Integrations).",
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        groups = (options["only"],) if options["only"] else sinks.GROUPS
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        if sinks.LIVE in groups and backend.endswith("InMemoryChannelLayer"):
            raise CommandError(
                "runconsumer on its own needs a shared channel layer (set REDIS_URL); in the "
                "embedded mode `manage.py demo` runs the consumer inside the web server process."
            )
        try:
            run_until_stopped(
                lambda stop: services.run_consumer(stop, groups=groups, metrics_port=options["metrics_port"])
            )
        except Exception as exc:
            # run_consumer logged the traceback; the exit status and this line tell the supervisor.
            raise CommandError(f"runconsumer failed: {type(exc).__name__}: {exc}") from exc
