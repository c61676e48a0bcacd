"""Status rules that match "any value but the code" (error codes), write values beside the write
range ("0 or 6..32 A"), and the shipped profiles reloaded with both (fault rules first)."""

from django.db import migrations, models


def reload_shipped_profiles(apps, schema_editor) -> None:
    from gateway.profiles.store import read_spec_file, save_spec, shipped_profile_files

    models_ = [apps.get_model("gateway", name) for name in ("DeviceProfile", "Register", "StatusRule")]
    for path in shipped_profile_files():
        save_spec(read_spec_file(path), *models_)


class Migration(migrations.Migration):
    dependencies = [("gateway", "0002_shipped_profiles")]

    operations = [
        migrations.RemoveConstraint(model_name="statusrule", name="unique_status_code"),
        migrations.AddField(
            model_name="register",
            name="write_values",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="Single values allowed besides the range, e.g. [0] (0 A pauses); without a range, "
                "the only values allowed, e.g. [0, 1].",
            ),
        ),
        migrations.AddField(
            model_name="statusrule",
            name="match",
            field=models.CharField(
                choices=[
                    ("is", "is the code"),
                    ("is_not", "is any value but the code (e.g. an error code other than 0)"),
                ],
                default="is",
                help_text="'is not': the rule applies to every value but the code (an error code other than 0).",
                max_length=8,
            ),
        ),
        migrations.AddConstraint(
            model_name="statusrule",
            constraint=models.UniqueConstraint(
                fields=("profile", "register", "code", "match"),
                name="unique_status_code",
                violation_error_message="This status code is already mapped in this profile.",
            ),
        ),
        migrations.RunPython(reload_shipped_profiles, migrations.RunPython.noop),
    ]
