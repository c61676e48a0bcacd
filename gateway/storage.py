"""Store what the consumer handled: the latest record of each charge point."""

import logging

from django.db import close_old_connections

from gateway.models import ChargePoint, LatestTelemetry
from gateway.telemetry import Record, parse_ts

logger = logging.getLogger(__name__)


def save_latest(records: list[Record]) -> int:
    """Upsert the newest record per charge point; records of unknown charge points are skipped."""
    close_old_connections()
    newest: dict[str, Record] = {}
    for record in records:
        slug = record["charge_point"]
        current = newest.get(slug)
        if current is None or (record["ts"], record["seq"]) >= (current["ts"], current["seq"]):
            newest[slug] = record
    ids = dict(ChargePoint.objects.filter(slug__in=newest).values_list("slug", "id"))
    for slug in newest.keys() - ids.keys():
        logger.warning("telemetry for unknown charge point %r not stored", slug)
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
    return len(rows)
