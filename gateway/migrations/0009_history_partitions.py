"""PLACEHOLDER (lane history fills it): on PostgreSQL, the telemetry history as a table partitioned by time."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("gateway", "0008_history_sessions_alerts")]
    operations = []
