"""The sessions sink of the history consumer group: derive sessions from each batch, store them.

One transaction per batch: the newest session of each charge point in the batch is read (one
query), the records applied by gateway/sessions/derive.py, and the sessions that changed written
back (one bulk update, one bulk insert). The derivation's whole state is in those rows, so a new
SessionSink (a restarted consumer) continues where the last one stopped, and a batch delivered
twice changes nothing the second time (its records are at or before each session's last applied
(ts, seq)).
"""

import logging
from collections import defaultdict
from dataclasses import fields
from datetime import datetime

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import OuterRef, Subquery

from gateway.history.query import close_stale_connection
from gateway.models import ChargePoint, ChargingSession, TelemetrySample
from gateway.models.sessions import Meter
from gateway.sessions.derive import SessionState, derive_sessions
from gateway.telemetry import Record, format_ts

logger = logging.getLogger(__name__)

# SessionState field -> ChargingSession field, where the names differ.
ROW_NAMES = {"charge_point": "charge_point_slug", "site": "site_slug"}
STATE_FIELDS = [field.name for field in fields(SessionState) if field.name != "id"]
UPDATE_FIELDS = [ROW_NAMES.get(name, name) for name in STATE_FIELDS]
METERS = (Meter.TOTAL.value, Meter.SESSION.value)


def to_state(row: ChargingSession) -> SessionState:
    return SessionState(id=row.pk, **{name: getattr(row, ROW_NAMES.get(name, name)) for name in STATE_FIELDS})


def to_row(state: SessionState, charge_point_id: int | None) -> ChargingSession:
    row = ChargingSession(**{ROW_NAMES.get(name, name): getattr(state, name) for name in STATE_FIELDS})
    row.pk = state.id
    row.charge_point_id = charge_point_id
    return row


def newest_sessions(slugs: set[str], *, lock: bool = False) -> dict[str, SessionState]:
    """The newest session (open or closed) of each of these charge points that has one.

    lock (inside a transaction): lock those rows until it ends, so the job that closes silent
    sessions (gateway/sessions/silence.py) waits for this batch's update or this batch sees its.
    """
    newest = ChargingSession.objects.filter(charge_point_slug=OuterRef("charge_point_slug")).order_by("-started_at")
    rows = ChargingSession.objects.filter(charge_point_slug__in=slugs, pk=Subquery(newest.values("pk")[:1]))
    if lock:
        rows = rows.select_for_update()
    return {row.charge_point_slug: to_state(row) for row in rows}


def previous_record(slug: str, ts: datetime) -> Record | None:
    """The charge point's last stored record before ts (the history store ran first on this batch)."""
    sample = (
        TelemetrySample.objects.filter(charge_point__slug=slug, ts__lt=ts)
        .order_by("-ts", "-seq")
        .values("ts", "status", *METERS)
        .first()
    )
    if sample is None:
        return None
    return {"ts": format_ts(sample["ts"]), "status": sample["status"], "values": {key: sample[key] for key in METERS}}


def save_sessions(records: list[Record], unknown: set[str] | None = None) -> list[SessionState]:
    """Derive and store the sessions of a batch; returns those that changed.

    Records of charge points not in the database are skipped (as the history store skips them),
    with one warning per slug in `unknown` (the slugs already warned about).
    """
    close_stale_connection()
    by_charge_point: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_charge_point[record["charge_point"]].append(record)
    ids = dict(ChargePoint.objects.filter(slug__in=by_charge_point).values_list("slug", "id"))
    for slug in by_charge_point.keys() - ids.keys():
        if unknown is None or slug not in unknown:
            logger.warning("sessions of unknown charge point %r not derived", slug)
            if unknown is not None:
                unknown.add(slug)
    changed: list[SessionState] = []
    with transaction.atomic():
        latest = newest_sessions(set(ids), lock=True)
        for slug, batch in by_charge_point.items():
            if slug in ids:
                changed += derive_sessions(latest.get(slug), batch, previous_record)
        # Existing rows first: a session that closed frees its charge point for the one that opened.
        existing = [to_row(state, ids.get(state.charge_point)) for state in changed if state.id is not None]
        ChargingSession.objects.bulk_update(existing, UPDATE_FIELDS)
        new_states = [state for state in changed if state.id is None]
        created = ChargingSession.objects.bulk_create([to_row(state, ids[state.charge_point]) for state in new_states])
        for state, row in zip(new_states, created, strict=True):
            state.id = row.pk
    return changed


class SessionSink:
    """Sink: derive charging sessions from a batch of records (history group, after the history store)."""

    def __init__(self) -> None:
        self.unknown: set[str] = set()

    async def __call__(self, records: list[Record]) -> None:
        await sync_to_async(save_sessions)(records, self.unknown)
