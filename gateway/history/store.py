"""The history sink: every telemetry record as one row, stored in bulk and idempotently.

The key (charge point, ts, seq) turns a redelivered record into a conflict that is ignored, so a
batch handled twice (a consumer restart before its commit) leaves the same rows. Records of
unknown charge points are skipped with a warning; records older than the raw retention are skipped
(their partition is gone or about to go).
"""

import logging
from datetime import UTC, datetime, timedelta

import orjson
from asgiref.sync import sync_to_async
from django.db import connection, transaction

from gateway.conf import setting
from gateway.history import partitions, rollups
from gateway.history.query import close_stale_connection
from gateway.models import ChargePoint, TelemetrySample
from gateway.models.history import HISTORY_ROLES
from gateway.telemetry import Record, parse_ts

logger = logging.getLogger(__name__)

VALUE_ROLES = tuple(role for role in HISTORY_ROLES if role != "active_limit_a")

# PostgreSQL: the batch is one JSON parameter, unpacked into typed columns by the server
# (json_to_recordset, json_to_record: json, not jsonb, skips building a binary copy of the batch),
# joined to the charge points and inserted in one statement
# that also reports what it stored and which charge points it did not know. Partition routing and
# ON CONFLICT on the partitioned key are the server's: ~5 µs of consumer CPU per record (bench/history.py).
INSERT_SAMPLES_POSTGRESQL = f"""
WITH batch AS (
    SELECT r.charge_point, r.ts, r.seq, r.status, r.active_limit_a, {", ".join(f"v.{role}" for role in VALUE_ROLES)}
    FROM json_to_recordset(%s::json) AS r(
        charge_point text, ts timestamptz, seq bigint, status text, "values" json, active_limit_a float8
    )
    CROSS JOIN LATERAL json_to_record(r."values") AS v({", ".join(f"{role} float8" for role in VALUE_ROLES)})
),
stored AS (
    INSERT INTO gateway_telemetrysample (charge_point_id, ts, seq, status, {", ".join(HISTORY_ROLES)})
    SELECT cp.id, b.ts, b.seq, b.status, {", ".join(f"b.{role}" for role in HISTORY_ROLES)}
    FROM batch AS b JOIN gateway_chargepoint AS cp ON cp.slug = b.charge_point
    WHERE b.ts >= %s
    ON CONFLICT DO NOTHING
    RETURNING ts
)
SELECT
    (SELECT count(*) FROM stored),
    (SELECT min(ts) FROM stored),
    ARRAY(
        SELECT DISTINCT b.charge_point FROM batch AS b
        LEFT JOIN gateway_chargepoint AS cp ON cp.slug = b.charge_point WHERE cp.id IS NULL
    )
"""  # noqa: S608 - table and column names are constants

# The partitions a batch needs and does not have (a new day; records replayed from an outbox).
MISSING_PARTITIONS = "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(quote_ident(name)) IS NULL"


def raw_cutoff(now: datetime | None = None) -> datetime:
    """Records older than this are past the raw retention (EVDASH_RETENTION_RAW_DAYS)."""
    return (now or datetime.now(UTC)) - timedelta(days=setting("RETENTION_RAW_DAYS"))


def save_history(records: list[Record]) -> int:
    """Store the records (skipping unknown charge points and duplicates); returns how many were new.

    (On SQLite: how many were kept, duplicates included.)
    """
    if not records:
        return 0
    close_stale_connection()
    cutoff = raw_cutoff()
    # The records and, for old ones, the roll-up's note of them: both or neither.
    with transaction.atomic():
        if connection.vendor == "postgresql":
            stored, oldest, unknown = _insert_postgresql(records, cutoff)
        else:
            stored, oldest, unknown = _insert_orm(records, cutoff)
        if oldest is not None:
            rollups.note_stored(oldest)
    for slug in sorted(unknown):
        logger.warning("telemetry for unknown charge point %r not stored in the history", slug)
    return stored


def _insert_postgresql(records: list[Record], cutoff: datetime) -> tuple[int, datetime | None, set[str]]:
    table = partitions.SAMPLES
    days = {record["ts"][:10] for record in records}
    names = sorted({table.name(datetime.fromisoformat(day).date()) for day in days})
    with connection.cursor() as cursor:
        cursor.execute(MISSING_PARTITIONS, [names])
        for (name,) in cursor.fetchall():
            start = table.start_of(name)
            if start and table.next_start(start) > cutoff.date():
                partitions.ensure_partitions(table, start, start)
        cursor.execute(INSERT_SAMPLES_POSTGRESQL, [orjson.dumps(records).decode(), cutoff])
        stored, oldest, unknown = cursor.fetchone()
    return stored, oldest, set(unknown)


def _insert_orm(records: list[Record], cutoff: datetime) -> tuple[int, datetime | None, set[str]]:
    """Any other database (SQLite in the embedded mode): the ORM's bulk insert, ignoring conflicts."""
    slugs = {record["charge_point"] for record in records}
    ids = dict(ChargePoint.objects.filter(slug__in=slugs).values_list("slug", "id"))
    rows = []
    for record in records:
        charge_point_id = ids.get(record["charge_point"])
        ts = parse_ts(record["ts"])
        if charge_point_id is None or ts < cutoff:
            continue
        values = record.get("values") or {}
        rows.append(
            TelemetrySample(
                charge_point_id=charge_point_id,
                ts=ts,
                seq=record["seq"],
                status=record["status"],
                active_limit_a=record.get("active_limit_a"),
                **{role: values.get(role) for role in VALUE_ROLES},
            )
        )
    # INSERT OR IGNORE does not say which rows were new: the count includes duplicates, and the
    # rollups are recomputed from the batch's oldest record (the same result when nothing was new).
    TelemetrySample.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    return len(rows), min((row.ts for row in rows), default=None), slugs - ids.keys()


async def store_history(records: list[Record]) -> None:
    """Sink: store every record of the batch in the history, idempotently."""
    await sync_to_async(save_history)(records)
