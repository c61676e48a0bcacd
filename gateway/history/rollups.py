"""One-minute rollups of the raw samples: per charge point and completed minute, min/avg/max per value.

The maintenance rolls up the completed minutes since the newest rollup (less a look-back for
records that arrive a little late), or since the oldest record the sink stored out of order (an
outbox replayed after an outage: the sink notes it in the database, RollupBacklog, in the
transaction that stores the records, and the note goes only once a roll-up covered it, so a
restart in between loses nothing). Each minute is recomputed from its raw samples and upserted,
so rolling a minute up twice gives the same row.
"""

from datetime import UTC, datetime, timedelta

from django.db import connection

from gateway.history import partitions
from gateway.history.query import ROLLUP_TABLE, SAMPLE_TABLE, db_datetime, rolled_up_until
from gateway.models.history import HISTORY_ROLES, RollupBacklog

# Records a little late (the history group behind by a batch) still land in minutes recomputed.
LOOKBACK = timedelta(minutes=5)

PENDING = "pending"  # the one row of RollupBacklog
NOTE_PENDING_SQL = {
    "postgresql": (
        "INSERT INTO gateway_rollupbacklog (name, since) VALUES (%s, %s) ON CONFLICT (name) "
        "DO UPDATE SET since = LEAST(gateway_rollupbacklog.since, excluded.since)"
    ),
    "sqlite": (
        "INSERT INTO gateway_rollupbacklog (name, since) VALUES (%s, %s) ON CONFLICT (name) "
        "DO UPDATE SET since = min(gateway_rollupbacklog.since, excluded.since)"
    ),
}


def note_stored(oldest: datetime, now: datetime | None = None) -> None:
    """The sink stored records from `oldest` on (call it in the transaction that stored them): if
    they are older than the roll-up's look-back, note it durably, so the next roll-up covers them.

    Records of the last few minutes need no note (the look-back covers them): live traffic writes
    nothing here, only a replay of old records does.
    """
    if oldest >= (now or datetime.now(UTC)) - LOOKBACK:
        return
    with connection.cursor() as cursor:
        cursor.execute(NOTE_PENDING_SQL[connection.vendor], [PENDING, db_datetime(oldest)])


def pending_since() -> datetime | None:
    """The oldest out-of-order record noted and not yet rolled up, if any."""
    return RollupBacklog.objects.filter(name=PENDING).values_list("since", flat=True).first()


def _done_pending(since: datetime) -> None:
    # Conditional: a note of older records written meanwhile stays for the next roll-up.
    RollupBacklog.objects.filter(name=PENDING, since=since).delete()


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
    pending = pending_since()
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
        written = cursor.rowcount
    if pending is not None and since <= floor_minute(pending):
        _done_pending(pending)
    return written
