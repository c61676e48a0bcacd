"""History maintenance: partitions ahead, rollups of completed minutes, retention.

Runs by itself as a job of the history consumer group (gateway/sinks.py), every MAINTENANCE_INTERVAL_S,
and on demand (`manage.py history maintain`). On PostgreSQL retention drops whole partitions: raw
samples by day once the whole day is older than EVDASH_RETENTION_RAW_DAYS, rollups by month once
the whole month is older than EVDASH_RETENTION_ROLLUP_DAYS. On SQLite the same cut-offs DELETE rows.
The site controllers' samples (SiteSample, one row per site per control period) are kept as long
as the raw telemetry they are drawn beside, and deleted (not partitioned: a few sites, not thousands
of charge points).
"""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection

from gateway.conf import setting
from gateway.history import partitions, rollups
from gateway.history.query import ROLLUP_TABLE, SAMPLE_TABLE, close_stale_connection, rolled_up_until
from gateway.models import SiteSample
from gateway.runtime import wait_unless_stopped

logger = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 60.0


def cutoffs(now: datetime) -> tuple[datetime, datetime]:
    """(raw, rollup): what is older than these goes."""
    return (
        now - timedelta(days=setting("RETENTION_RAW_DAYS")),
        now - timedelta(days=setting("RETENTION_ROLLUP_DAYS")),
    )


def prune(now: datetime) -> dict[str, Any]:
    """Drop (PostgreSQL) or delete (SQLite) what is past the retention."""
    raw_cutoff, rollup_cutoff = cutoffs(now)
    site_samples, _ = SiteSample.objects.filter(at__lt=raw_cutoff).delete()
    if connection.vendor == "postgresql":
        return {
            "dropped": partitions.drop_partitions_before(partitions.SAMPLES, raw_cutoff)
            + partitions.drop_partitions_before(partitions.ROLLUPS, rollup_cutoff),
            "site_samples_deleted": site_samples,
        }
    deleted = {}
    with connection.cursor() as cursor:
        for table, column, cutoff in ((SAMPLE_TABLE, "ts", raw_cutoff), (ROLLUP_TABLE, "minute", rollup_cutoff)):
            cursor.execute(
                f"DELETE FROM {table} WHERE {column} < %s",  # noqa: S608 - constants
                [connection.ops.adapt_datetimefield_value(cutoff)],
            )
            deleted[table] = cursor.rowcount
    return {"deleted": deleted, "site_samples_deleted": site_samples}


def maintain(now: datetime | None = None) -> dict[str, Any]:
    """One cycle: partitions ahead, roll up, prune (rolled up before the raw rows go)."""
    close_stale_connection()
    now = now or datetime.now(UTC)
    report: dict[str, Any] = {"created": []}
    if connection.vendor == "postgresql":
        ahead = now + timedelta(days=partitions.DAYS_AHEAD)
        for table in partitions.TABLES:
            report["created"] += partitions.ensure_partitions(table, now, ahead)
    report["rolled_up"] = rollups.roll_up(now=now)
    report.update(prune(now))
    return report


def status() -> dict[str, Any]:
    """What the history holds: rows, oldest/newest, partitions, rolled up until."""
    close_stale_connection()
    info: dict[str, Any] = {"vendor": connection.vendor}
    with connection.cursor() as cursor:
        for table, column in ((SAMPLE_TABLE, "ts"), (ROLLUP_TABLE, "minute")):
            cursor.execute(f"SELECT count(*), min({column}), max({column}) FROM {table}")  # noqa: S608
            rows, oldest, newest = cursor.fetchone()
            info[table] = {"rows": rows, "oldest": oldest, "newest": newest}
    if connection.vendor == "postgresql":
        for table in partitions.TABLES:
            info[table.table]["partitions"] = list(partitions.partitions(table))
    info["rolled_up_until"] = rolled_up_until()
    info["retention_days"] = {"raw": setting("RETENTION_RAW_DAYS"), "rollup": setting("RETENTION_ROLLUP_DAYS")}
    return info


async def run_maintenance(stop: asyncio.Event, interval_s: float = MAINTENANCE_INTERVAL_S) -> None:
    """Job of the history group: a maintenance cycle now and every interval_s until stopped.

    A failed cycle is logged and tried again next time: a database hiccup must not stop the
    consumers it runs beside (run_together stops all jobs when one ends).
    """
    while not stop.is_set():
        try:
            report = await sync_to_async(maintain)()
            deleted = any(report.get("deleted", {}).values()) or report.get("site_samples_deleted")
            if report["created"] or report.get("dropped") or deleted:
                logger.info("history maintenance: %s", report)
        except Exception:
            logger.exception("history maintenance failed; trying again in %.0f s", interval_s)
        if await wait_unless_stopped(stop, interval_s):
            return
