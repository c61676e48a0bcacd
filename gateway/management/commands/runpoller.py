"""manage.py runpoller: the soft-PLC that polls charge points, publishes telemetry and carries out operator commands.

Records go through the poller's durable outbox (EVDASH_OUTBOX_DIR/poller-<id>.sqlite3) to Kafka
or to the edge MQTT broker (--output). Commands come the same way (Kafka evdash.commands, or the
site's MQTT commands topics), are journaled in EVDASH_OUTBOX_DIR/commands-<id>.sqlite3 before
their write, and their results go out through the outbox. SIGTERM or SIGINT: the poll in
progress finishes, the outbox is flushed, and the process exits 0 within services.STOP_WITHIN_S
(15 s; README, "Stopping"); what could not be delivered stays in the outbox for the next start.
"""

import asyncio
import json

import uvloop
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from gateway import services
from gateway.conf import setting
from gateway.models import Site
from gateway.publish.outbox import OutboxLocked
from gateway.publish.outputs import OUTPUTS
from gateway.runtime import WORKER_CHECKS, configure_verbosity, raise_open_file_limit, run_until_stopped


class Command(BaseCommand):
    requires_system_checks = WORKER_CHECKS  # not the URL conf (gateway/runtime.py)
    help = (
        "Poll every enabled charge point over Modbus TCP, publish telemetry to Kafka or MQTT "
        "and carry out operator commands."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--site", help="Only poll the charge points of this site (slug): one poller per site.")
        parser.add_argument(
            "--once",
            action="store_true",
            help="Poll every charge point once, print the records, exit (takes no commands).",
        )
        parser.add_argument(
            "--output",
            help=f"Where to publish: {' or '.join(OUTPUTS)} (default: the POLLER_OUTPUT setting, kafka unless set).",
        )
        parser.add_argument(
            "--poller-id",
            help=(
                "This poller's name, for its outbox and command journal files, its MQTT state and its "
                "command consumer group (default: POLLER_ID, else host name + site)."
            ),
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            help="Serve Prometheus /metrics, /healthz and /readyz on this port (README, Integrations).",
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        site = options["site"]
        if site and not Site.objects.filter(slug=site).exists():
            raise CommandError(f"No site with slug {site!r}.")
        output = options["output"] or setting("POLLER_OUTPUT")
        if output not in OUTPUTS:
            raise CommandError(f"Unknown output {output!r}: choose one of {', '.join(OUTPUTS)}.")
        poller_id = options["poller_id"]
        try:
            if options["once"]:
                records = asyncio.run(services.poll_once(site=site, output=output, poller_id=poller_id))
                for record in records:
                    self.stdout.write(json.dumps(record))
                return
            raise_open_file_limit()  # one socket per charge point: thousands, above the usual 1,024
            # uvloop: the event loop's own work is a large share of a poll at thousands of charge points.
            run_until_stopped(
                lambda stop: services.run_poller(
                    stop, site=site, output=output, poller_id=poller_id, metrics_port=options["metrics_port"]
                ),
                loop_factory=uvloop.new_event_loop,
            )
        except (OutboxLocked, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
