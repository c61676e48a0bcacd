"""One-minute rollups of the raw samples: per charge point and completed minute, min/avg/max per value.

The maintenance rolls up the completed minutes since the newest rollup (less a look-back for
records that arrive a little late), or since the oldest record the sink stored out of order (an
outbox replayed after an outage: the sink notes it). Each minute is recomputed from its raw
samples and upserted, so rolling a minute up twice gives the same row.
"""

import threading
from datetime import UTC, datetime, timedelta

from django.db import connection

from gateway.history import partitions
from gateway.history.query import ROLLUP_TABLE, SAMPLE_TABLE, db_datetime, rolled_up_until
from gateway.models.history import HISTORY_ROLES

# Records a little late (the history group behind by a batch) still land in minutes recomputed.
LOOKBACK = timedelta(minutes=5)

_pending_lock = threading.Lock()
_pending_since: datetime | None = None


def note_stored(oldest: datetime) -> None:
    """The sink stored records from `oldest` on: the next roll-up covers their minutes."""
    global _pending_since
    with _pending_lock:
        if _pending_since is None or oldest < _pending_since:
            _pending_since = oldest


def _take_pending() -> datetime | None:
    global _pending_since
    with _pending_lock:
        pending, _pending_since = _pending_since, None
    return pending


def floor_minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _minute_sql(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"date_trunc('minute', {column})"
    return f"strftime('%%Y-%%m-%%d %%H:%%M:00', {column})"


def _oldest_sample() -> datetime | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT min(ts) FROM {SAMPLE_TABLE}")  # noqa: S608 - a constant
        (oldest,) = cursor.fetchone()
    if oldest is None:
        return None
    return oldest if isinstance(oldest, datetime) else datetime.fromisoformat(oldest).replace(tzinfo=UTC)


def roll_up(*, since: datetime | None = None, now: datetime | None = None) -> int:
    """Roll up the completed minutes from `since` (default: see the module) to now; returns the rows written."""
    until = floor_minute(now or datetime.now(UTC))
    pending = _take_pending()
    if since is None:
        rolled = rolled_up_until()
        since = rolled - LOOKBACK if rolled else _oldest_sample()
        if pending is not None:
            since = pending if since is None else min(since, pending)
    if since is None:
        return 0
    since = floor_minute(since)
    if since >= until:
        return 0
    if connection.vendor == "postgresql":
        partitions.ensure_partitions(partitions.ROLLUPS, since, until)
    columns = [f"{role}_{kind}" for role in HISTORY_ROLES for kind in ("min", "avg", "max")]
    aggregates = ", ".join(f"min({role}), avg({role}), max({role})" for role in HISTORY_ROLES)
    minute = _minute_sql("ts")
    sql = f"""
        INSERT INTO {ROLLUP_TABLE} (charge_point_id, minute, samples, last_status, {", ".join(columns)})
        SELECT * FROM (
            SELECT charge_point_id, m, count(*), max(CASE WHEN rn = 1 THEN status END), {aggregates}
            FROM (
                SELECT *, {minute} AS m,
                       row_number() OVER (PARTITION BY charge_point_id, {minute} ORDER BY ts DESC, seq DESC) AS rn
                FROM {SAMPLE_TABLE}
                WHERE ts >= %s AND ts < %s
            ) AS samples
            GROUP BY charge_point_id, m
        ) AS minutes WHERE true
        ON CONFLICT (charge_point_id, minute) DO UPDATE SET
            samples = excluded.samples, last_status = excluded.last_status,
            {", ".join(f"{column} = excluded.{column}" for column in columns)}
    """  # noqa: S608 - table and column names are constants
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_datetime(since), db_datetime(until)])
        return cursor.rowcount
