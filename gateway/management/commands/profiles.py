"""manage.py profiles list|export SLUG|import FILE: device profiles as documented JSON (docs/profiles.md)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from gateway.choices import PollGroup
from gateway.modbus.planner import plan_reads
from gateway.models import DeviceProfile
from gateway.profiles.spec import ProfileFormatError
from gateway.profiles.store import export_profile_json, import_profile, load_spec, read_profile_bytes


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
            with path.open("rb") as stream:
                data = read_profile_bytes(stream, path.name)
            # The same checks as the admin's import and profile form; nothing saved unless all pass.
            profile, created = import_profile(data, origin=path.name)
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}.") from exc
        except ProfileFormatError as exc:
            raise CommandError(str(exc)) from exc
        verb = "Created" if created else "Replaced"
        self.stdout.write(
            f"{verb} profile {profile.slug} ({profile.registers.count()} registers, "
            f"{profile.status_rules.count()} status rules)."
        )
