"""Store what the consumer handled: the latest record of each charge point."""

import logging

import orjson
from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

from gateway.models import ChargePoint, LatestTelemetry
from gateway.telemetry import Record, newest_per_charge_point, parse_ts

logger = logging.getLogger(__name__)

# PostgreSQL: the whole batch is one JSON parameter, unpacked, joined to the charge points and
# upserted by the server in one statement. Through the ORM, psycopg quoted each JSONB value on the
# client side (~80 µs of consumer CPU per record); this costs ~3 µs.
UPSERT_LATEST_POSTGRESQL = """
INSERT INTO gateway_latesttelemetry (charge_point_id, record, source_ts, received_at)
SELECT cp.id, batch.record, (batch.record->>'ts')::timestamptz, now()
FROM jsonb_array_elements(%s::jsonb) AS batch(record)
JOIN gateway_chargepoint AS cp ON cp.slug = batch.record->>'charge_point'
ON CONFLICT (charge_point_id) DO UPDATE
SET record = EXCLUDED.record, source_ts = EXCLUDED.source_ts, received_at = EXCLUDED.received_at
RETURNING record->>'charge_point'
"""


def save_latest(records: list[Record]) -> int:
    """Upsert the newest record per charge point; records of unknown charge points are skipped."""
    close_old_connections()
    newest = {record["charge_point"]: record for record in newest_per_charge_point(records)}
    upsert = _upsert_postgresql if connection.vendor == "postgresql" else _upsert_orm
    stored = upsert(newest)
    for slug in newest.keys() - stored:
        logger.warning("telemetry for unknown charge point %r not stored", slug)
    return len(stored)


def _upsert_postgresql(newest: dict[str, Record]) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(UPSERT_LATEST_POSTGRESQL, [orjson.dumps(list(newest.values())).decode()])
        return {slug for (slug,) in cursor.fetchall()}


def _upsert_orm(newest: dict[str, Record]) -> set[str]:
    """Any other database (SQLite in the embedded mode): the ORM's bulk upsert."""
    ids = dict(ChargePoint.objects.filter(slug__in=newest).values_list("slug", "id"))
    rows = [
        LatestTelemetry(charge_point_id=ids[slug], record=record, source_ts=parse_ts(record["ts"]))
        for slug, record in newest.items()
        if slug in ids
    ]
    LatestTelemetry.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["charge_point"],
        update_fields=["record", "source_ts", "received_at"],
    )
    return set(ids)


async def store_latest(records: list[Record]) -> None:
    """Sink: the latest record of each charge point, in the database."""
    await sync_to_async(save_latest)(records)
