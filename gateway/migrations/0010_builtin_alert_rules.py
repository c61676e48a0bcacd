"""The built-in alert rules, as rows the admin edits like any other (threshold, severity, notifications)."""

from django.db import migrations

BUILT_IN = [
    # name, kind, severity, extra fields
    ("Charger faulted", "faulted", "critical", {}),
    ("Charge point offline", "offline", "warning", {"hold_s": 60.0}),
    ("Telemetry stale", "stale", "warning", {}),
    ("Temperature high", "temperature", "warning", {"threshold": 70.0, "hysteresis": 5.0, "hold_s": 10.0}),
    ("Command failed", "command_failed", "warning", {}),
]


def create(apps, schema_editor) -> None:
    AlertRule = apps.get_model("gateway", "AlertRule")
    for name, kind, severity, extra in BUILT_IN:
        AlertRule.objects.get_or_create(name=name, defaults={"kind": kind, "severity": severity, **extra})


def remove(apps, schema_editor) -> None:
    AlertRule = apps.get_model("gateway", "AlertRule")
    AlertRule.objects.filter(name__in=[name for name, *_ in BUILT_IN]).delete()


class Migration(migrations.Migration):
    dependencies = [("gateway", "0009_history_partitions")]
    operations = [migrations.RunPython(create, remove)]
