"""Operator commands as profile data; the setpoint role set_current_a is gone (the command names its register).

Stored registers lose the role, and stored profiles of a shipped slug get the shipped commands,
unless their registers were edited so that the commands no longer fit them (left empty, logged).
"""

import logging
from dataclasses import fields

from django.db import migrations, models

logger = logging.getLogger(__name__)


def forwards(apps, schema_editor) -> None:
    from gateway.profiles.spec import RegisterSpec
    from gateway.profiles.store import read_spec_file, shipped_profile_files
    from gateway.profiles.validate import command_register_problems

    DeviceProfile = apps.get_model("gateway", "DeviceProfile")
    Register = apps.get_model("gateway", "Register")
    Register.objects.filter(role="set_current_a").update(role="")
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
                "%s: stored registers differ from the shipped file, commands left empty: %s",
                spec.slug,
                "; ".join(problems),
            )
            continue
        profile.commands = spec.to_dict()["commands"]
        profile.save(update_fields=["commands"])


class Migration(migrations.Migration):
    dependencies = [
        ("gateway", "0006_commands"),
    ]

    operations = [
        migrations.AddField(
            model_name="deviceprofile",
            name="commands",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='How operator commands are done (docs/profiles.md, Commands), e.g. [{"action": "pause", "register": "max_current", "value": 0}] or [{"action": "pause", "unsupported": "no pause register"}].',
            ),
        ),
        migrations.AlterField(
            model_name="register",
            name="role",
            field=models.CharField(
                blank=True,
                choices=[
                    ("", "(not in telemetry)"),
                    ("vendor_status", "vendor status code (mapped through the status table)"),
                    ("iec61851_state", "IEC 61851 state code"),
                    ("power_w", "active power, W"),
                    ("current_l1_a", "current L1, A"),
                    ("current_l2_a", "current L2, A"),
                    ("current_l3_a", "current L3, A"),
                    ("voltage_l1_v", "voltage L1-N, V"),
                    ("voltage_l2_v", "voltage L2-N, V"),
                    ("voltage_l3_v", "voltage L3-N, V"),
                    ("energy_total_wh", "energy meter total, Wh"),
                    ("session_energy_wh", "session energy, Wh"),
                    ("temperature_c", "temperature, °C"),
                    ("current_limit_a", "current limit in force (read back), A"),
                    ("error_code", "error code"),
                ],
                default="",
                max_length=32,
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
