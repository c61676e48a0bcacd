"""manage.py simulate: serve simulated charge points over Modbus TCP until SIGINT/SIGTERM."""

from django.core.management.base import BaseCommand, CommandError

from gateway.profiles.spec import ProfileFormatError
from gateway.runtime import configure_verbosity, run_until_stopped
from gateway.simulator.catalogue import UnknownProfile, load_profiles
from gateway.simulator.fleet import MAX_PORT, SimulatorFleet, serve_fleet

DEFAULT_PROFILE = "generic-ev-charger"


class Command(BaseCommand):
    help = "Serve N simulated charge points (one Modbus TCP port each) until SIGINT/SIGTERM."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--count", type=int, default=3, help="Number of charge points.")
        parser.add_argument("--base-port", type=int, default=15020, help="Port of the first one; the others follow.")
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
        parser.add_argument("--speedup", type=float, default=1.0, help="Simulated seconds per real second.")
        parser.add_argument("--seed", type=int, default=None, help="Random seed, for a reproducible fleet.")
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--profile", default=None, help=f"Device profile slug (default {DEFAULT_PROFILE}).")
        which.add_argument(
            "--profiles", default=None, help="Comma-separated profile slugs, cycled over the charge points."
        )
        parser.add_argument(
            "--unit-id",
            type=int,
            default=None,
            help="Modbus unit id of every charge point (default: each profile's own; 0 answers any).",
        )
        parser.add_argument("--run-for", type=float, default=None, help="Stop after this many seconds.")

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        count, base_port = options["count"], options["base_port"]
        if not 1 <= count <= 1000:
            raise CommandError("--count must be between 1 and 1000.")
        if not 1 <= base_port <= MAX_PORT - count + 1:
            raise CommandError(f"Ports {base_port}..{base_port + count - 1} are not all in 1..{MAX_PORT}.")
        if options["unit_id"] is not None and not 0 <= options["unit_id"] <= 247:
            raise CommandError("--unit-id must be between 0 and 247.")
        if options["speedup"] <= 0:
            raise CommandError("--speedup must be positive.")
        if options["run_for"] is not None and options["run_for"] <= 0:
            raise CommandError("--run-for must be positive.")
        if options["profiles"] is not None:
            slugs = [slug.strip() for slug in options["profiles"].split(",") if slug.strip()]
            if not slugs:
                raise CommandError("--profiles needs at least one slug.")
        else:
            slugs = [options["profile"] or DEFAULT_PROFILE]
        try:
            profiles = load_profiles(slugs)
            fleet = SimulatorFleet(
                profiles,
                count,
                host=options["host"],
                base_port=base_port,
                speedup=options["speedup"],
                seed=options["seed"],
                unit_id=options["unit_id"],
            )
        except (UnknownProfile, ProfileFormatError) as exc:
            raise CommandError(str(exc)) from None
        try:
            run_until_stopped(lambda stop: serve_fleet(fleet, stop, run_for_s=options["run_for"]))
        except OSError as exc:
            raise CommandError(str(exc)) from exc
