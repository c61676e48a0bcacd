"""Load the shipped site meter profiles (gateway/profiles/shipped/meters/*.json: the Eastron SDM630)."""

from django.db import migrations


def load_meter_profiles(apps, schema_editor) -> None:
    from gateway.profiles.store import read_spec_file, save_spec, shipped_meter_files

    models = [apps.get_model("gateway", name) for name in ("DeviceProfile", "Register", "StatusRule")]
    for path in shipped_meter_files():
        save_spec(read_spec_file(path), *models)


class Migration(migrations.Migration):
    dependencies = [("gateway", "0016_failsafe_commands")]
    operations = [migrations.RunPython(load_meter_profiles, migrations.RunPython.noop)]
