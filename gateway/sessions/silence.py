"""Sessions of a charger that went silent: closed by a job of the history group, not by a record.

The derivation (gateway/sessions/derive.py) ends a session at its last online record when a record
arrives more than MAX_SILENCE_S after it. A poller that stopped for good sends no such record, so
this job (every SILENCE_CHECK_INTERVAL_S, beside the history consumer) ends the open sessions whose
last online record is older than MAX_SILENCE_S: at that record, reason `offline` — exactly what the
derivation would have stored had a record come.

It waits until the history consumer has caught up with the topic: a consumer reading a backlog
(after a restart, or a new history group reading from the earliest offset) is behind the wall
clock, and the records it has not read yet may continue the session.

Rules shared with the sink:
- one conditional UPDATE (WHERE ended_at IS NULL AND last_online_at < cut-off): it changes a row
  only if it is still open and still silent when the update runs;
- the sink locks the newest session of each charge point of its batch (select_for_update, in its
  transaction; SQLite's IMMEDIATE transactions serialise the whole write), so the two never
  interleave: a job that runs first is seen by the sink, a sink that runs first moves
  last_online_at (or closes the row) and the job's condition no longer holds;
- a closed session is never reopened: a record that arrives after the job closed it (a charger
  polled again, or records delayed upstream, e.g. in a poller's outbox) is applied like any record
  after a closed session: `charging`/`suspended` starts a NEW session (its counter baseline the
  record just before it, if online and within MAX_SILENCE_S), anything else starts nothing; and
  records at or before the closed session's last applied (ts, seq) are ignored, as always.
"""

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.db.models import F

from gateway.history.query import close_stale_connection
from gateway.models import ChargingSession
from gateway.models.sessions import SessionEnd
from gateway.runtime import wait_unless_stopped
from gateway.sessions.derive import MAX_SILENCE_S

logger = logging.getLogger(__name__)

SILENCE_CHECK_INTERVAL_S = 60.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def close_silent_sessions(now: datetime) -> int:
    """End the open sessions whose last online record is more than MAX_SILENCE_S before now.

    They end at that record (last_online_at), reason offline; returns how many were closed.
    """
    close_stale_connection()
    cutoff = now - timedelta(seconds=MAX_SILENCE_S)
    silent = ChargingSession.objects.filter(ended_at__isnull=True, last_online_at__lt=cutoff)
    # One statement, its condition checked again on each row it updates: a row the sink has just
    # moved on (or closed) is left alone.
    return silent.update(ended_at=F("last_online_at"), end_reason=SessionEnd.OFFLINE.value)


class SilentSessionCloser:
    """Job of the history group: close the sessions of silent chargers every interval_s until stopped.

    `clock` gives the time now (tests inject it); `caught_up` says whether the history consumer has
    read the topic to its end (gateway/sinks.py passes TelemetryConsumer.caught_up).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = utc_now,
        caught_up: Callable[[], bool] = lambda: True,
        interval_s: float = SILENCE_CHECK_INTERVAL_S,
    ) -> None:
        self.clock = clock
        self.caught_up = caught_up
        self.interval_s = interval_s
        self.closed = 0  # sessions closed since started (a figure for tests and logs)

    async def close_once(self) -> int:
        """One look: closes what is silent, unless the consumer is still behind the topic."""
        if not self.caught_up():
            return 0
        closed = await sync_to_async(close_silent_sessions)(self.clock())
        if closed:
            self.closed += closed
            logger.info("closed %d charging session(s) of silent charge points", closed)
        return closed

    async def __call__(self, stop: asyncio.Event) -> None:
        """Run until stop is set. A failed look is logged and tried again next time."""
        while not stop.is_set():
            try:
                await self.close_once()
            except Exception:
                logger.exception("closing silent sessions failed; trying again in %.0f s", self.interval_s)
            if await wait_unless_stopped(stop, self.interval_s):
                return
