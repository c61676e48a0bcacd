"""manage.py history maintain|status: the telemetry history's maintenance, for operators.

The history consumer group runs the same maintenance every minute by itself; `maintain` runs one
cycle now (partitions ahead, rollups of completed minutes, retention), `--since` recomputes the
rollups from a moment on (after an import, say).
"""

from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from gateway.history import maintenance, rollups
from gateway.runtime import configure_verbosity


class Command(BaseCommand):
    help = "Maintain the telemetry history (partitions, rollups, retention) or show what it holds."

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=["maintain", "status"])
        parser.add_argument("--since", help="maintain: recompute the rollups from this ISO 8601 moment on.")

    def handle(self, *args, action: str, since: str | None, verbosity: int, **options) -> None:
        configure_verbosity(verbosity)
        if action == "status":
            self._status()
            return
        if since:
            moment = parse_datetime(since)
            if moment is None or moment.tzinfo is None:
                raise CommandError(f"--since {since!r}: give an ISO 8601 moment with a time zone")
            self.stdout.write(f"rolled up {rollups.roll_up(since=moment)} minutes since {moment.isoformat()}")
        report = maintenance.maintain()
        self.stdout.write(f"partitions created: {', '.join(report['created']) or 'none'}")
        self.stdout.write(f"rolled up {report['rolled_up']} charge point minutes")
        if "dropped" in report:
            self.stdout.write(f"partitions dropped: {', '.join(report['dropped']) or 'none'}")
        else:
            deleted = ", ".join(f"{table}: {rows}" for table, rows in report["deleted"].items())
            self.stdout.write(f"rows deleted past the retention: {deleted}")

    def _status(self) -> None:
        info = maintenance.status()
        self.stdout.write(
            f"database: {info['vendor']}; retention: raw {info['retention_days']['raw']} days, "
            f"rollups {info['retention_days']['rollup']} days"
        )
        for table in ("gateway_telemetrysample", "gateway_telemetryrollup"):
            entry = info[table]
            line = f"{table}: {entry['rows']} rows, from {_when(entry['oldest'])} to {_when(entry['newest'])}"
            if "partitions" in entry:
                names = entry["partitions"]
                line += f", {len(names)} partitions ({', '.join(names[:1] + names[-1:])})"
            self.stdout.write(line)
        self.stdout.write(f"rolled up until: {_when(info['rolled_up_until'])}")


def _when(moment: datetime | str | None) -> str:
    if moment is None:
        return "-"
    return moment.isoformat() if isinstance(moment, datetime) else str(moment)
