"""manage.py simulate: serve simulated charge points over Modbus TCP until SIGINT/SIGTERM."""

from django.core.management.base import BaseCommand, CommandError

from gateway.choices import Wiring
from gateway.profiles.spec import ProfileFormatError, ProfileSpec
from gateway.runtime import configure_verbosity, raise_open_file_limit, run_until_stopped
from gateway.simulator.behaviour import RESPONSE_DELAY_S
from gateway.simulator.catalogue import UnknownProfile, load_profiles
from gateway.simulator.fleet import MAX_PORT, SimulatorFleet, serve_fleet
from gateway.simulator.processes import FleetPlan, serve_in_processes, slice_fleet
from gateway.simulator.site import DAY_S, SiteModel

DEFAULT_PROFILE = "generic-ev-charger"
DEFAULT_METER_PROFILE = "eastron-sdm630"
# The building's load per phase at night, as a share of its afternoon peak (--building-load-a).
NIGHT_SHARE = 0.35
# Lean fleets are the large ones: one behaviour step a second keeps ticking cheap at thousands of
# charge points, and a poller reading once a second still sees fresh values at every read.
LEAN_TICK_S = 1.0
# Open files per process beyond one listener and one client connection per charge point.
SPARE_FILES = 64


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
        parser.add_argument(
            "--lean",
            action="store_true",
            help="Serve with the lean Modbus TCP server (same registers, a fraction of pymodbus' CPU per read).",
        )
        parser.add_argument(
            "--ignore-writes",
            action="store_true",
            help="Acknowledge every write but change nothing, like a charger ignoring writes (read-backs mismatch).",
        )
        parser.add_argument(
            "--session-scale",
            type=float,
            default=1.0,
            help=(
                "Shrink idle gaps, the energy cars need, their stay and the time between faults by this "
                "factor (0 < x <= 1); power stays real. The demo uses 0.01: sessions within minutes."
            ),
        )
        parser.add_argument(
            "--response-delay",
            type=float,
            default=RESPONSE_DELAY_S,
            help=f"Seconds a car takes to follow a new limit (default {RESPONSE_DELAY_S:g}; IEC 61851-1 allows 5; "
            "0: at once). The limit reads back at once.",
        )
        site = parser.add_argument_group("site meter (site load management)")
        site.add_argument(
            "--site-meter-port",
            type=int,
            default=None,
            help="Serve a site meter on this port: per phase, the building load plus every charge point's current.",
        )
        site.add_argument(
            "--site-meter-profile",
            default=DEFAULT_METER_PROFILE,
            help=f"The meter's profile (default {DEFAULT_METER_PROFILE}).",
        )
        site.add_argument(
            "--building-load-a",
            type=float,
            default=24.0,
            help=f"The building's own load per phase in the afternoon, A (at night {NIGHT_SHARE * 100:.0f}%% of it).",
        )
        site.add_argument(
            "--wiring",
            default=Wiring.THREE_PHASE.value,
            help="Comma-separated wiring cycled over the charge points: L123 (three-phase), L1, L2 or L3.",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="Worker processes, each serving a contiguous slice of the ports (default 1: this process).",
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        count, base_port = options["count"], options["base_port"]
        if count < 1:
            raise CommandError("--count must be at least 1.")
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1.")
        if not 1 <= base_port <= MAX_PORT - count + 1:
            raise CommandError(f"Ports {base_port}..{base_port + count - 1} are not all in 1..{MAX_PORT}.")
        if options["unit_id"] is not None and not 0 <= options["unit_id"] <= 247:
            raise CommandError("--unit-id must be between 0 and 247.")
        if options["speedup"] <= 0:
            raise CommandError("--speedup must be positive.")
        if not 0 < options["session_scale"] <= 1:
            raise CommandError("--session-scale must be above 0 and at most 1.")
        if options["run_for"] is not None and options["run_for"] <= 0:
            raise CommandError("--run-for must be positive.")
        if options["profiles"] is not None:
            slugs = [slug.strip() for slug in options["profiles"].split(",") if slug.strip()]
            if not slugs:
                raise CommandError("--profiles needs at least one slug.")
        else:
            slugs = [options["profile"] or DEFAULT_PROFILE]
        meter_port = options["site_meter_port"]
        wiring = [item.strip() for item in options["wiring"].split(",") if item.strip()]
        if any(item not in Wiring.values for item in wiring) or not wiring:
            raise CommandError(f"--wiring takes {', '.join(Wiring.values)}, comma-separated.")
        if meter_port is not None and (not 1 <= meter_port <= MAX_PORT or base_port <= meter_port < base_port + count):
            raise CommandError("--site-meter-port must be a valid port outside the charge points' ports.")
        if options["processes"] > 1 and (meter_port is not None or set(wiring) != {Wiring.THREE_PHASE}):
            raise CommandError("--site-meter-port and --wiring need every charge point in one process (--processes 1).")
        if options["response_delay"] < 0:
            raise CommandError("--response-delay must not be negative.")
        check_open_files(count, options["processes"])
        try:
            profiles = load_profiles(slugs)
            plan = FleetPlan(
                tuple(profiles),
                count,
                base_port,
                host=options["host"],
                speedup=options["speedup"],
                seed=options["seed"],
                unit_id=options["unit_id"],
                lean=options["lean"],
                ignore_writes=options["ignore_writes"],
                session_scale=options["session_scale"],
                response_delay_s=options["response_delay"],
                tick_s=LEAN_TICK_S if options["lean"] else None,
                run_for_s=options["run_for"],
                verbosity=options["verbosity"],
            )
            fleet = None if options["processes"] > 1 else plan.build_fleet()
            if fleet is not None and (meter_port is not None or set(wiring) != {Wiring.THREE_PHASE}):
                # A site even without a meter: single-phase wiring limits the cars' phases.
                [meter_profile] = load_profiles([options["site_meter_profile"]]) if meter_port is not None else [None]
                attach_site_meter(fleet, meter_profile, meter_port, options, wiring)
        except (UnknownProfile, ProfileFormatError) as exc:
            raise CommandError(str(exc)) from None
        if fleet is None:
            failures = serve_in_processes(plan, options["processes"])
            if failures:
                raise CommandError("simulator worker failed: " + "; ".join(failures))
            return
        try:
            run_until_stopped(lambda stop: serve_fleet(fleet, stop, run_for_s=plan.run_for_s))
        except OSError as exc:
            raise CommandError(str(exc)) from exc


def attach_site_meter(
    fleet: SimulatorFleet, meter_profile: ProfileSpec | None, port: int | None, options: dict, wiring: list[str]
) -> None:
    """Put the fleet on a simulated site with a daily building load, and serve its meter on `port` (if any).

    The day is compressed like the sessions (--session-scale), so the demo's load swings in minutes.
    """
    peak_a = options["building_load_a"]
    site = SiteModel(
        night_load_a=peak_a * NIGHT_SHARE,
        day_load_a=peak_a,
        day_length_s=DAY_S * options["session_scale"],
        speedup=options["speedup"],
        seed=options["seed"],
    )
    fleet.attach_site(
        site,
        wiring=[wiring[index % len(wiring)] for index in range(len(fleet.charge_points))],
        meter_profile=meter_profile,
        meter_port=port or 0,
    )


def check_open_files(count: int, processes: int) -> None:
    """Raise the open-file limit; CommandError if the largest worker's slice still needs more."""
    largest = max(part.count for part in slice_fleet(count, processes))
    needed = 2 * largest + SPARE_FILES
    limit = raise_open_file_limit()
    if needed > limit:
        raise CommandError(
            f"{largest} charge points in one process need about {needed} open files (a listener and a "
            f"client connection each), but the limit is {limit}: raise the hard limit (ulimit -Hn, "
            f"LimitNOFILE=) or spread the fleet over more --processes."
        )
