"""Load the shipped device profiles (gateway/profiles/shipped/*.json)."""

from django.db import migrations


def load_shipped_profiles(apps, schema_editor) -> None:
    from gateway.profiles.store import read_spec_file, save_spec, shipped_profile_files

    models = [apps.get_model("gateway", name) for name in ("DeviceProfile", "Register", "StatusRule")]
    for path in shipped_profile_files():
        save_spec(read_spec_file(path), *models)


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]
    operations = [migrations.RunPython(load_shipped_profiles, migrations.RunPython.noop)]
