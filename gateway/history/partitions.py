"""PostgreSQL: the history tables' time partitions (raw samples by day, rollups by month).

Native declarative partitioning (PARTITION BY RANGE) set up by migration 0009 and kept by this
module: partitions are created ahead of time (and on demand for a batch whose records fall outside
them), and retention drops whole partitions, which frees their space at once with no VACUUM.

Why not django-postgres-extra: it is not installed (and the gateway installs offline from a wheel
set), it manages its own partitioned model base class and migration operations, and what we need
(one range key, two intervals, create ahead, drop behind) is the few statements below.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import connection

# Partitions created ahead of today, so that a normal day's first insert never creates one.
DAYS_AHEAD = 3


@dataclass(frozen=True)
class PartitionedTable:
    """A history table partitioned by range on a timestamp column, by day or by month."""

    table: str
    column: str
    interval: str  # "day" | "month"

    def period_start(self, moment: datetime | date) -> date:
        day = moment.astimezone(UTC).date() if isinstance(moment, datetime) else moment
        return day if self.interval == "day" else day.replace(day=1)

    def next_start(self, start: date) -> date:
        if self.interval == "day":
            return start + timedelta(days=1)
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)

    def name(self, start: date) -> str:
        suffix = start.strftime("%Y%m%d" if self.interval == "day" else "%Y%m")
        return f"{self.table}_p{suffix}"

    def start_of(self, name: str) -> date | None:
        """The first day a partition of this table holds, from its name (None: not one of ours)."""
        suffix = name.removeprefix(f"{self.table}_p")
        try:
            if self.interval == "day":
                return datetime.strptime(suffix, "%Y%m%d").replace(tzinfo=UTC).date()
            return datetime.strptime(suffix, "%Y%m").replace(tzinfo=UTC).date()
        except ValueError:
            return None


SAMPLES = PartitionedTable("gateway_telemetrysample", "ts", "day")
ROLLUPS = PartitionedTable("gateway_telemetryrollup", "minute", "month")
TABLES = (SAMPLES, ROLLUPS)


def is_partitioned(table: PartitionedTable) -> bool:
    """Whether the table is partitioned here (PostgreSQL after migration 0009)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_partitioned_table AS p JOIN pg_class AS c ON c.oid = p.partrelid "
            "WHERE c.relname = %s AND c.relnamespace = to_regnamespace(current_schema())::oid",
            [table.table],
        )
        return cursor.fetchone() is not None


def partitions(table: PartitionedTable) -> dict[str, date]:
    """The table's partitions: name -> first day, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "JOIN pg_class AS parent ON parent.oid = i.inhparent "
            "WHERE parent.relname = %s AND parent.relnamespace = to_regnamespace(current_schema())::oid",
            [table.table],
        )
        found = {name: table.start_of(name) for (name,) in cursor.fetchall()}
    return {name: start for name, start in sorted(found.items(), key=lambda item: str(item[1])) if start}


def ensure_partitions(table: PartitionedTable, since: datetime | date, until: datetime | date) -> list[str]:
    """Create the partitions covering [since, until] that do not exist yet; returns their names."""
    created = []
    start, last = table.period_start(since), table.period_start(until)
    existing = set(partitions(table))
    with connection.cursor() as cursor:
        while start <= last:
            name = table.name(start)
            if name not in existing:
                end = table.next_start(start)
                cursor.execute(
                    f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table.table}" '
                    f"FOR VALUES FROM ('{start.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"
                )
                created.append(name)
            start = table.next_start(start)
    return created


def drop_partitions_before(table: PartitionedTable, cutoff: datetime) -> list[str]:
    """Drop every partition whose whole range lies before `cutoff`; returns their names."""
    dropped = []
    with connection.cursor() as cursor:
        for name, start in partitions(table).items():
            end = datetime.combine(table.next_start(start), datetime.min.time(), UTC)
            if end <= cutoff:
                cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
                dropped.append(name)
    return dropped
