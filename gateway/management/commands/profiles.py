"""manage.py profiles list|export SLUG|import FILE: device profiles as documented JSON (docs/profiles.md)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from gateway.choices import PollGroup
from gateway.modbus.planner import plan_reads
from gateway.models import DeviceProfile, Register, StatusRule
from gateway.profiles.spec import ProfileFormatError
from gateway.profiles.store import export_profile_json, load_spec, parse_profile_json, save_spec


class Command(BaseCommand):
    help = "List, export or import device profiles."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="Profiles with their register and read counts.")
        export = actions.add_parser("export", help="Write a profile as JSON.")
        export.add_argument("slug")
        export.add_argument("-o", "--output", help="File to write (default: standard output).")
        load = actions.add_parser("import", help="Create or replace a profile from a JSON file.")
        load.add_argument("file")

    def handle(self, *args, **options) -> None:
        getattr(self, f"do_{options['action']}")(options)

    def do_list(self, options: dict) -> None:
        for profile in DeviceProfile.objects.prefetch_related("registers", "status_rules").order_by("slug"):
            spec = load_spec(profile)
            fast = len(plan_reads(spec, (PollGroup.FAST,)))
            slow = len(plan_reads(spec, (PollGroup.SLOW,)))
            self.stdout.write(f"{spec.slug:<28} {len(spec.registers):>3} registers  {fast:>2} fast + {slow} slow reads")

    def do_export(self, options: dict) -> None:
        profile = DeviceProfile.objects.filter(slug=options["slug"]).first()
        if profile is None:
            raise CommandError(f"Unknown profile {options['slug']!r}.")
        text = export_profile_json(load_spec(profile))
        if options["output"]:
            Path(options["output"]).write_text(text)
        else:
            self.stdout.write(text, ending="")

    def do_import(self, options: dict) -> None:
        path = Path(options["file"])
        try:
            spec = parse_profile_json(path.read_bytes(), origin=path.name)
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from exc
        except ProfileFormatError as exc:
            raise CommandError(str(exc)) from exc
        created = not DeviceProfile.objects.filter(slug=spec.slug).exists()
        save_spec(spec, DeviceProfile, Register, StatusRule)
        verb = "Created" if created else "Replaced"
        self.stdout.write(
            f"{verb} profile {spec.slug} ({len(spec.registers)} registers, {len(spec.status_rules)} status rules)."
        )
