"""Telemetry history for the charts: raw records when they are few, else buckets grouped by the server.

A range that holds at most `max_points` records of a charge point is sent raw. A longer one is
downsampled in SQL (GROUP BY bucket): from the raw samples for ranges up to RAW_MAX_RANGE (a day),
beyond that from the one-minute rollups, completed by the raw samples newer than the newest rollup
(the minutes the maintenance has not rolled up yet). Buckets are aligned on the epoch, so a chart
reloaded a minute later shows the same buckets.

Sync functions (views call them; async callers wrap them in sync_to_async).
"""

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import close_old_connections, connection

from gateway.models import ChargePoint, TelemetrySample
from gateway.models.history import HISTORY_ROLES
from gateway.telemetry import format_ts

SAMPLE_TABLE = "gateway_telemetrysample"
ROLLUP_TABLE = "gateway_telemetryrollup"
# Ranges up to a day are grouped from the raw samples (a day of 1 Hz is 86,400 rows of one
# charge point, read through its primary key); longer ones from the one-minute rollups.
RAW_MAX_RANGE = timedelta(days=1)
# Bucket widths a chart reads easily, s; the smallest that keeps the points under max_points wins.
NICE_BUCKETS_S: tuple[int, ...] = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


def epoch_sql(column: str) -> str:
    """SQL for a timestamp column as seconds since the epoch (a float, millisecond precision)."""
    if connection.vendor == "postgresql":
        return f"extract(epoch FROM {column})::float8"
    # SQLite stores Django datetimes as UTC text: %s is whole seconds, %f - %S the fraction.
    return f"(CAST(strftime('%%s', {column}) AS REAL) + (strftime('%%f', {column}) - strftime('%%S', {column})))"


def bucket_sql(column: str) -> str:
    """SQL for the bucket index of a timestamp column; the bucket width (s) is the parameter."""
    if connection.vendor == "postgresql":
        return f"floor({epoch_sql(column)} / %s)::bigint"
    return f"CAST({epoch_sql(column)} / %s AS INTEGER)"


def close_stale_connection() -> None:
    """close_old_connections() for the long-running consumer, but never inside a caller's transaction."""
    if not connection.in_atomic_block:
        close_old_connections()


def db_datetime(moment: datetime) -> Any:
    """A datetime as a raw query's parameter (SQLite compares Django's UTC text, not ISO with an offset)."""
    return connection.ops.adapt_datetimefield_value(moment)


def pick_bucket_s(start: datetime, end: datetime, max_points: int) -> int:
    """The smallest nice bucket width that keeps the aligned buckets of the range within max_points."""
    first, last = start.timestamp(), end.timestamp()
    for bucket_s in NICE_BUCKETS_S:
        if math.floor(last / bucket_s) - math.floor(first / bucket_s) + 1 <= max_points:
            return bucket_s
    return math.ceil((last - first) / max(max_points - 1, 1))


def _bucket_start(index: int, bucket_s: float) -> str:
    return format_ts(datetime.fromtimestamp(index * bucket_s, UTC))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def charge_point_series(
    slug: str, start: datetime, end: datetime, *, max_points: int = 1500, roles: Sequence[str] | None = None
) -> dict:
    """One charge point's history over [start, end]: raw, or bucketed with min/avg/max per value.

    `roles`: the values to send (default all of HISTORY_ROLES); a chart that draws four of them
    asks for those, a third of the bytes. Raises ChargePoint.DoesNotExist for an unknown slug and
    ValueError for a role the history does not keep.
    """
    started = time.perf_counter()
    wanted = tuple(roles) if roles else HISTORY_ROLES
    unknown = [role for role in wanted if role not in HISTORY_ROLES]
    if unknown:
        raise ValueError(f"unknown values {', '.join(unknown)}; the history keeps {', '.join(HISTORY_ROLES)}")
    charge_point_id = ChargePoint.objects.values_list("id", flat=True).get(slug=slug)
    columns = ("ts", "seq", "status", *wanted)
    rows = list(
        TelemetrySample.objects.filter(charge_point_id=charge_point_id, ts__gte=start, ts__lte=end)
        .order_by("ts", "seq")
        .values_list(*columns)[: max_points + 1]
    )
    result: dict[str, Any] = {"charge_point": slug, "start": format_ts(start), "end": format_ts(end)}
    if len(rows) <= max_points:
        result.update(
            bucket_s=0,
            source="raw",
            points=len(rows),
            t=[format_ts(row[0]) for row in rows],
            status=[row[2] for row in rows],
            values={role: [row[3 + i] for row in rows] for i, role in enumerate(wanted)},
            last={"ts": format_ts(rows[-1][0]), "seq": rows[-1][1]} if rows else None,
        )
        result["query_ms"] = _ms(started)
        return result

    bucket_s = pick_bucket_s(start, end, max_points)
    aligned_start = datetime.fromtimestamp(math.floor(start.timestamp() / bucket_s) * bucket_s, UTC)
    buckets: dict[int, dict[str, Any]] = {}
    source = "raw"
    raw_from = aligned_start
    if end - start > RAW_MAX_RANGE and bucket_s % 60 == 0:
        source = "rollup"
        rolled_until = _merge_rollup_buckets(buckets, charge_point_id, aligned_start, end, bucket_s)
        raw_from = max(raw_from, rolled_until) if rolled_until else raw_from
    _merge_raw_buckets(buckets, charge_point_id, raw_from, end, bucket_s)
    newest = (
        TelemetrySample.objects.filter(charge_point_id=charge_point_id, ts__gte=start, ts__lte=end)
        .order_by("-ts", "-seq")
        .values_list("ts", "seq")
        .first()
    )
    ordered = [buckets[index] for index in sorted(buckets)]
    result.update(
        bucket_s=bucket_s,
        source=source,
        points=len(ordered),
        t=[_bucket_start(bucket["index"], bucket_s) for bucket in ordered],
        status=[bucket["status"] for bucket in ordered],
        values={role: [_average(bucket, role) for bucket in ordered] for role in wanted},
        min={role: [bucket["min"][role] for bucket in ordered] for role in wanted},
        max={role: [bucket["max"][role] for bucket in ordered] for role in wanted},
        last={"ts": format_ts(newest[0]), "seq": newest[1]} if newest else None,
    )
    result["query_ms"] = _ms(started)
    return result


def _average(bucket: dict[str, Any], role: str) -> float | None:
    weight = bucket["weight"][role]
    return bucket["sum"][role] / weight if weight else None


def _merge(buckets: dict[int, dict[str, Any]], index: int, status: str, parts: list[tuple]) -> None:
    """Fold (role, sum, weight, min, max) parts into bucket `index`; later sources come last."""
    bucket = buckets.get(index)
    if bucket is None:
        bucket = buckets[index] = {
            "index": index,
            "status": status,
            "sum": dict.fromkeys(HISTORY_ROLES, 0.0),
            "weight": dict.fromkeys(HISTORY_ROLES, 0),
            "min": dict.fromkeys(HISTORY_ROLES),
            "max": dict.fromkeys(HISTORY_ROLES),
        }
    bucket["status"] = status
    for role, total, weight, low, high in parts:
        if not weight or total is None:
            continue
        bucket["sum"][role] += total
        bucket["weight"][role] += weight
        current_min, current_max = bucket["min"][role], bucket["max"][role]
        bucket["min"][role] = low if current_min is None else min(current_min, low)
        bucket["max"][role] = high if current_max is None else max(current_max, high)


def _merge_raw_buckets(
    buckets: dict[int, dict[str, Any]], charge_point_id: int, since: datetime, end: datetime, bucket_s: float
) -> None:
    aggregates = ", ".join(f"sum({r}), count({r}), min({r}), max({r})" for r in HISTORY_ROLES)
    sql = f"""
        SELECT b, max(CASE WHEN rn = 1 THEN status END), {aggregates}
        FROM (
            SELECT *, {bucket_sql("ts")} AS b,
                   row_number() OVER (PARTITION BY {bucket_sql("ts")} ORDER BY ts DESC, seq DESC) AS rn
            FROM {SAMPLE_TABLE}
            WHERE charge_point_id = %s AND ts >= %s AND ts <= %s
        ) AS samples
        GROUP BY b ORDER BY b
    """  # noqa: S608 - table and column names are constants
    with connection.cursor() as cursor:
        cursor.execute(sql, [bucket_s, bucket_s, charge_point_id, db_datetime(since), db_datetime(end)])
        for row in cursor.fetchall():
            parts = [(role, *row[2 + 4 * i : 6 + 4 * i]) for i, role in enumerate(HISTORY_ROLES)]
            _merge(buckets, int(row[0]), row[1], parts)


def _merge_rollup_buckets(
    buckets: dict[int, dict[str, Any]], charge_point_id: int, since: datetime, end: datetime, bucket_s: float
) -> datetime | None:
    """Fold the rollups of the range into buckets; returns where they stop (the raw tail's start)."""
    aggregates = ", ".join(
        f"sum({r}_avg * samples), sum(CASE WHEN {r}_avg IS NOT NULL THEN samples END), min({r}_min), max({r}_max)"
        for r in HISTORY_ROLES
    )
    sql = f"""
        SELECT b, max(CASE WHEN rn = 1 THEN last_status END), max(minute), {aggregates}
        FROM (
            SELECT *, {bucket_sql("minute")} AS b,
                   row_number() OVER (PARTITION BY {bucket_sql("minute")} ORDER BY minute DESC) AS rn
            FROM {ROLLUP_TABLE}
            WHERE charge_point_id = %s AND minute >= %s AND minute <= %s
        ) AS rollups
        GROUP BY b ORDER BY b
    """  # noqa: S608 - table and column names are constants
    newest: datetime | None = None
    with connection.cursor() as cursor:
        cursor.execute(sql, [bucket_s, bucket_s, charge_point_id, db_datetime(since), db_datetime(end)])
        for row in cursor.fetchall():
            parts = [(role, *row[3 + 4 * i : 7 + 4 * i]) for i, role in enumerate(HISTORY_ROLES)]
            _merge(buckets, int(row[0]), row[1], parts)
            minute = _as_datetime(row[2])
            newest = minute if newest is None else max(newest, minute)
    return newest + timedelta(minutes=1) if newest else None


def _as_datetime(value: Any) -> datetime:
    """A timestamp from a raw cursor: a datetime on PostgreSQL, UTC text on SQLite."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def rolled_up_until(charge_point_id: int | None = None) -> datetime | None:
    """The end of the newest rolled-up minute (of one charge point, or of any), or None."""
    where, params = ("WHERE charge_point_id = %s", [charge_point_id]) if charge_point_id else ("", [])
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(minute) FROM {ROLLUP_TABLE} {where}", params)  # noqa: S608
        (newest,) = cursor.fetchone()
    return _as_datetime(newest) + timedelta(minutes=1) if newest else None


def fleet_power_series(start: datetime, end: datetime, *, site: str | None = None, bucket_s: float = 5.0) -> dict:
    """Fleet power over [start, end): per bucket, the sum over charge points of their mean power.

    The end is exclusive, so an end on a bucket boundary never opens the next bucket (a sample
    stamped exactly at the boundary belongs to the bucket still filling).

    Buckets of whole minutes over more than an hour read the rollups (then the raw samples newer
    than the newest rollup); others read the raw samples.
    """
    started = time.perf_counter()
    bucket_s = float(bucket_s)
    aligned_start = datetime.fromtimestamp(math.floor(start.timestamp() / bucket_s) * bucket_s, UTC)
    site_join, site_where, site_params = "", "", []
    if site:
        site_join = (
            "JOIN gateway_chargepoint AS cp ON cp.id = h.charge_point_id JOIN gateway_site AS s ON s.id = cp.site_id"
        )
        site_where = "AND s.slug = %s"
        site_params = [site]
    parts, params = [], []  # row sources: (charge point, bucket, power sum, weight)
    means, mean_params = "", []  # 60 s buckets: a rollup row is already a charge point's mean
    raw_from = aligned_start
    if bucket_s % 60 == 0 and end - start > timedelta(hours=1):
        rolled = rolled_up_until()
        if rolled and rolled > aligned_start:
            rollup_rows = f"""
                FROM {ROLLUP_TABLE} AS h {site_join}
                WHERE h.minute >= %s AND h.minute < %s AND h.power_w_avg IS NOT NULL {site_where}
            """
            rollup_params = [db_datetime(aligned_start), db_datetime(min(rolled, end)), *site_params]
            if bucket_s == 60:
                # The raw tail starts on a minute: no bucket has both sources.
                means = f" UNION ALL SELECT {bucket_sql('h.minute')} AS b, h.power_w_avg AS mean_w {rollup_rows}"
                mean_params = [bucket_s, *rollup_params]
            else:
                parts.append(f"""
                    SELECT h.charge_point_id AS cp_id, {bucket_sql("h.minute")} AS b,
                           h.power_w_avg * h.samples AS total, CAST(h.samples AS DOUBLE PRECISION) AS n
                    {rollup_rows}
                """)
                params += [bucket_s, *rollup_params]
            raw_from = rolled
    parts.append(f"""
        SELECT h.charge_point_id AS cp_id, {bucket_sql("h.ts")} AS b,
               h.power_w AS total, CAST(1 AS DOUBLE PRECISION) AS n
        FROM {SAMPLE_TABLE} AS h {site_join}
        WHERE h.ts >= %s AND h.ts < %s AND h.power_w IS NOT NULL {site_where}
    """)  # noqa: S608
    params += [bucket_s, db_datetime(raw_from), db_datetime(end), *site_params]
    # One grouping per (charge point, bucket) over the rows of the sources, then the sum per bucket.
    sql = f"""
        SELECT b, sum(mean_w) FROM (
            SELECT b, sum(total) / sum(n) AS mean_w
            FROM ({" UNION ALL ".join(parts)}) AS partials
            GROUP BY cp_id, b
            {means}
        ) AS per_charge_point
        GROUP BY b ORDER BY b
    """  # noqa: S608
    params += mean_params
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return {
        "t": [_bucket_start(int(b), bucket_s) for b, _ in rows],
        "power_w": [float(power) for _, power in rows],
        "bucket_s": bucket_s,
        "query_ms": _ms(started),
    }
