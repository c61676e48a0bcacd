"""The failsafe commands of site load management (set_failsafe_current / set_failsafe_timeout).

Stored profiles of a shipped slug get the shipped commands and sources (KEBA, Webasto, Vestel, ABB
and Schneider gained the two failsafe commands), unless their registers were edited so that the
commands no longer fit them (left as they are, logged), as 0007 did for the operator commands.
"""

import logging
from dataclasses import fields

from django.db import migrations

logger = logging.getLogger(__name__)


def forwards(apps, schema_editor) -> None:
    from gateway.profiles.spec import RegisterSpec
    from gateway.profiles.store import read_spec_file, shipped_profile_files
    from gateway.profiles.validate import command_register_problems

    DeviceProfile = apps.get_model("gateway", "DeviceProfile")
    Register = apps.get_model("gateway", "Register")
    columns = [f.name for f in fields(RegisterSpec)]
    for path in shipped_profile_files():
        spec = read_spec_file(path)
        profile = DeviceProfile.objects.filter(slug=spec.slug).first()
        if profile is None:
            continue
        registers = {
            register.name: RegisterSpec(**{name: getattr(register, name) for name in columns})
            for register in Register.objects.filter(profile=profile)
        }
        problems = command_register_problems(spec.commands, registers)
        if problems:
            logger.warning(
                "%s: stored registers differ from the shipped file, commands left as they are: %s",
                spec.slug,
                "; ".join(problems),
            )
            continue
        profile.commands = spec.to_dict()["commands"]
        profile.source = spec.source
        profile.save(update_fields=["commands", "source"])


class Migration(migrations.Migration):
    dependencies = [("gateway", "0015_site_load_management")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
