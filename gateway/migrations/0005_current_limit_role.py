"""One name for the current-limit setpoint: the role max_current_a becomes current_limit_a."""

from django.db import migrations, models


def rename_role(apps, schema_editor, old: str, new: str) -> None:
    Register = apps.get_model("gateway", "Register")
    Register.objects.filter(role=old).update(role=new)


def forwards(apps, schema_editor) -> None:
    rename_role(apps, schema_editor, "max_current_a", "current_limit_a")


def backwards(apps, schema_editor) -> None:
    rename_role(apps, schema_editor, "current_limit_a", "max_current_a")


class Migration(migrations.Migration):
    dependencies = [("gateway", "0004_merge_0003_pacing_0003_status_match_write_values")]

    operations = [
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
                    ("set_current_a", "current limit command (written by operators)"),
                ],
                default="",
                max_length=32,
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
