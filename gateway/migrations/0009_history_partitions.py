"""On PostgreSQL, the telemetry history as tables partitioned by time; nothing on other databases.

0008 created gateway_telemetrysample and gateway_telemetryrollup as plain tables (what Django's
schema editor knows). Here, on PostgreSQL only, each becomes a partitioned table of the same
columns (PARTITION BY RANGE: samples on ts, by day; rollups on minute, by month), with the same
primary key and index names, so Django's state still matches; the samples' ts index becomes a
BRIN. Rows already there are copied. gateway/history/partitions.py creates and drops partitions
from then on (`manage.py history maintain`, and the history consumer group's maintenance job).

Self-contained on purpose: a migration must not change meaning when the app code does.
"""

from datetime import UTC, date, datetime, timedelta

from django.db import migrations

# (table, partition key, interval, index name, index method)
TABLES = (
    ("gateway_telemetrysample", "ts", "day", "gateway_sample_ts_idx", "brin"),
    ("gateway_telemetryrollup", "minute", "month", "gateway_rollup_minute_idx", "btree"),
)
PRIMARY_KEYS = {
    "gateway_telemetrysample": "charge_point_id, ts, seq",
    "gateway_telemetryrollup": "charge_point_id, minute",
}
DAYS_AHEAD = 3


def _period_start(day: date, interval: str) -> date:
    return day if interval == "day" else day.replace(day=1)


def _next_start(start: date, interval: str) -> date:
    if interval == "day":
        return start + timedelta(days=1)
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def _create_partitions(cursor, table: str, interval: str, first: date, last: date) -> None:
    start = _period_start(first, interval)
    while start <= last:
        end = _next_start(start, interval)
        suffix = start.strftime("%Y%m%d" if interval == "day" else "%Y%m")
        cursor.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}_p{suffix}" PARTITION OF "{table}" '
            f"FOR VALUES FROM ('{start.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"
        )
        start = end


def partition(apps, schema_editor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    today = datetime.now(UTC).date()
    with schema_editor.connection.cursor() as cursor:
        for table, column, interval, index, method in TABLES:
            old = f"{table}_unpartitioned"
            cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
            cursor.execute(f'DROP INDEX IF EXISTS "{index}"')
            cursor.execute(
                f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
                f'PARTITION BY RANGE ("{column}")'
            )
            cursor.execute(f'SELECT min("{column}"), max("{column}") FROM "{old}"')  # noqa: S608 - constants
            oldest, newest = cursor.fetchone()
            first = min(oldest.astimezone(UTC).date(), today) if oldest else today
            last = max(newest.astimezone(UTC).date(), today) if newest else today
            _create_partitions(cursor, table, interval, first, last + timedelta(days=DAYS_AHEAD))
            cursor.execute(f'INSERT INTO "{table}" SELECT * FROM "{old}"')  # noqa: S608 - constants
            cursor.execute(f'DROP TABLE "{old}"')
            cursor.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY ({PRIMARY_KEYS[table]})')
            cursor.execute(f'CREATE INDEX "{index}" ON "{table}" USING {method} ("{column}")')


def unpartition(apps, schema_editor) -> None:
    """Back to plain tables (the rows kept), as 0008 made them."""
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table, column, _interval, index, _method in TABLES:
            old = f"{table}_partitioned"
            cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{old}"')
            cursor.execute(f'DROP INDEX IF EXISTS "{index}"')
            cursor.execute(f'ALTER TABLE "{old}" DROP CONSTRAINT IF EXISTS "{table}_pkey"')
            cursor.execute(f'CREATE TABLE "{table}" (LIKE "{old}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
            cursor.execute(f'INSERT INTO "{table}" SELECT * FROM "{old}"')  # noqa: S608 - constants
            cursor.execute(f'DROP TABLE "{old}" CASCADE')
            cursor.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_pkey" PRIMARY KEY ({PRIMARY_KEYS[table]})')
            cursor.execute(f'CREATE INDEX "{index}" ON "{table}" ("{column}")')


class Migration(migrations.Migration):
    dependencies = [("gateway", "0008_history_sessions_alerts")]
    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
