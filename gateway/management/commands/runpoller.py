"""manage.py runpoller: the soft-PLC that polls charge points and publishes telemetry.

SIGTERM or SIGINT: the poll in progress finishes, buffered records are flushed to Kafka, and the
process exits 0 within services.STOP_WITHIN_S (15 s; README, "Stopping").
"""

import asyncio
import json

import uvloop
from django.core.management.base import BaseCommand, CommandError

from gateway import services
from gateway.models import Site
from gateway.runtime import configure_verbosity, raise_open_file_limit, run_until_stopped


class Command(BaseCommand):
    help = "Poll every enabled charge point over Modbus TCP and publish telemetry to Kafka."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--site", help="Only poll the charge points of this site (slug): one poller per site.")
        parser.add_argument(
            "--once", action="store_true", help="Poll every charge point once, print the records, exit."
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        site = options["site"]
        if site and not Site.objects.filter(slug=site).exists():
            raise CommandError(f"No site with slug {site!r}.")
        if options["once"]:
            records = asyncio.run(services.poll_once(site=site))
            for record in records:
                self.stdout.write(json.dumps(record))
            return
        raise_open_file_limit()  # one socket per charge point: thousands, above the usual 1,024
        # uvloop: the event loop's own work is a large share of a poll at thousands of charge points.
        run_until_stopped(lambda stop: services.run_poller(stop, site=site), loop_factory=uvloop.new_event_loop)
