"""manage.py runbridge: MQTT telemetry and command results -> durable outbox -> Kafka
(gateway.mqtt.bridge); Kafka commands -> MQTT (gateway.mqtt.command_bridge).

SIGTERM or SIGINT: the bridge stops taking messages (the broker keeps the rest for its persistent
session) and commands (the uncommitted ones are read again at the next start), hands its outbox
to Kafka for up to 10 s (what is left stays on disk for the next start) and exits 0.
"""

import uvloop
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from gateway.mqtt.bridge import run_bridge
from gateway.publish.outbox import OutboxLocked
from gateway.runtime import WORKER_CHECKS, configure_verbosity, run_until_stopped


class Command(BaseCommand):
    requires_system_checks = WORKER_CHECKS  # not the URL conf (gateway/runtime.py)
    help = (
        "Forward telemetry and command results from the MQTT broker to Kafka, through a durable outbox "
        "on disk, and commands from Kafka to the MQTT broker."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve Prometheus /metrics, /healthz and /readyz on this port (README, Integrations).",
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        try:
            run_until_stopped(
                lambda stop: run_bridge(stop, metrics_port=options["metrics_port"]), loop_factory=uvloop.new_event_loop
            )
        except (ImproperlyConfigured, OutboxLocked) as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            # run_bridge logged the traceback; the exit status and this line tell the supervisor.
            raise CommandError(f"runbridge failed: {type(exc).__name__}: {exc}") from exc
