"""manage.py probe HOST[:PORT] --profile SLUG: read a charger once and show every decoded value."""

import asyncio
import json

from django.core.management.base import BaseCommand, CommandError

from gateway.modbus.connection import ConnectionFailed
from gateway.modbus.pacing import Pacing
from gateway.modbus.probe import ProbedValue, ProbeResult, probe
from gateway.models import DeviceProfile
from gateway.profiles.spec import MAX_PACING_GAP_MS, ProfileSpec
from gateway.profiles.store import load_spec
from gateway.runtime import configure_verbosity


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT or [IPv6]:PORT."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text)
    if not host:
        raise CommandError(f"No host in {text!r}.")
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise CommandError(f"Port must be a number between 1 and 65535, not {text!r}.")
    return int(text)


class Command(BaseCommand):
    help = "Read a charge point once with a profile's request plan and print every decoded value."

    def add_arguments(self, parser) -> None:
        parser.add_argument("endpoint", metavar="HOST[:PORT]", help="Charger address (default port: the profile's).")
        parser.add_argument("--profile", required=True, help="Device profile slug.")
        parser.add_argument("--unit", type=int, help="Modbus unit id (default: the profile's).")
        parser.add_argument("--json", action="store_true", help="Print the telemetry record as JSON.")
        parser.add_argument("--timeout", type=float, default=3.0, help="Connect/request timeout in seconds.")
        parser.add_argument(
            "--request-gap-ms",
            type=int,
            help="Least time between an answer and the next request (default: the profile's vendor pacing, "
            "KEBA 500). 0 reads back to back, for a box you know copes.",
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        spec = self._profile(options["profile"])
        host, port = parse_endpoint(options["endpoint"], spec.default_port)
        unit = spec.default_unit_id if options["unit"] is None else options["unit"]
        if not 0 <= unit <= 255:
            raise CommandError("--unit must be between 0 and 255.")
        gap_ms = options["request_gap_ms"]
        if gap_ms is not None and not 0 <= gap_ms <= MAX_PACING_GAP_MS:
            raise CommandError(f"--request-gap-ms must be between 0 and {MAX_PACING_GAP_MS}.")
        pacing = Pacing(spec.request_gap_ms if gap_ms is None else gap_ms, spec.write_gap_ms)
        try:
            result = asyncio.run(probe(host, port, unit, spec, timeout_s=options["timeout"], pacing=pacing))
        except ConnectionFailed as exc:
            raise CommandError(f"{host}:{port} unit {unit}: {exc}") from exc
        if options["json"]:
            self.stdout.write(json.dumps(result.record, indent=2))
        else:
            self._print_table(spec, host, port, unit, result)
        if result.errors:
            raise CommandError(f"{len(result.errors)} problem(s): " + "; ".join(result.errors))

    def _profile(self, slug: str) -> ProfileSpec:
        try:
            profile = DeviceProfile.objects.prefetch_related("registers", "status_rules").get(slug=slug)
        except DeviceProfile.DoesNotExist:
            known = ", ".join(DeviceProfile.objects.values_list("slug", flat=True))
            raise CommandError(f"Unknown profile {slug!r}. Known profiles: {known}.") from None
        return load_spec(profile)

    def _print_table(self, spec: ProfileSpec, host: str, port: int, unit: int, result: ProbeResult) -> None:
        record = result.record or {}
        paced = (
            f" ({result.paced_ms:.0f} ms of it waiting: {result.pacing.request_gap_ms} ms between requests)"
            if result.pacing.request_gap_ms
            else ""
        )
        self.stdout.write(
            f"{spec.name} at {host}:{port} unit {unit}: {result.reads} reads in {result.elapsed_ms:.0f} ms{paced}\n"
            f"status {record.get('status')}, IEC 61851 state {record.get('iec61851_state')}\n"
        )
        header = f"{'register':<32} {'fn':<8} {'addr':>5} {'unit':>4}  {'wire':<23} {'value':>18} {'':<5} role"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for probed in result.values:
            self.stdout.write(_row(probed))

    # Errors go to stderr through CommandError so scripts can tell them apart.


def _row(probed: ProbedValue) -> str:
    register = probed.register
    wire = " ".join(f"{int(w):04X}" for w in probed.words[:5]) + (" …" if len(probed.words) > 5 else "")
    if probed.error:
        shown = "(undecodable)"
    elif probed.value is None:
        shown = "n/a"
    else:
        shown = str(probed.value)
        meaning = register.enum.get(shown)
        if meaning:
            shown = f"{shown} ({meaning})"
    role = register.role or ""
    return (
        f"{register.name:<32} {register.function:<8} {register.address:>5} {probed.unit_id:>4}  "
        f"{wire:<23} {shown[:40]:>18} {register.unit:<5} {role}"
    )
