"""Sessions of a charger that went silent: the history group's job closes them by the clock (an
injected one), at the last online record, as the derivation would had a record come; a record
that arrives afterwards starts a new session and never reopens the closed one; the job and the
sink never overwrite each other (PostgreSQL: the sink locks the rows it derives from)."""

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections

from gateway.models import ChargingSession
from gateway.models.sessions import SessionEnd
from gateway.sessions import sink as sink_module
from gateway.sessions.derive import MAX_SILENCE_S, derive_sessions
from gateway.sessions.silence import SilentSessionCloser, close_silent_sessions
from gateway.sessions.sink import SessionSink
from tests.conftest import wait_for
from tests.test_sessions import T0, charge_point, consume, record, rows  # noqa: F401 (fixture)

CHARGING_S = 10  # records 1..10 charging, 100 Wh in all; the last online record is at T0 + 10 s
SILENT_AFTER = T0 + timedelta(seconds=CHARGING_S + MAX_SILENCE_S)  # silent from just after this


def charge_then_go_offline() -> list[dict]:
    """Available (the baseline), charging 10 s at 10 Wh/s, then offline records (the charger unreachable)."""
    records = [record(0, "available", energy_total_wh=1000.0, power_w=0.0)]
    records += [record(i, "charging", energy_total_wh=1000.0 + 10 * i, power_w=36_000.0) for i in range(1, 11)]
    records += [record(i, "offline") for i in (20, 40)]
    return records


def session_fields(row: dict) -> tuple:
    return row["started_at"], row["ended_at"], row["end_reason"], row["energy_wh"], row["peak_power_w"]


def test_the_job_closes_a_silent_session_as_a_late_record_would(charge_point) -> None:  # noqa: F811
    records = charge_then_go_offline()
    consume(records, SessionSink())
    [open_row] = rows()
    assert open_row["ended_at"] is None and open_row["last_online_at"] == T0 + timedelta(seconds=CHARGING_S)

    # Silent for exactly MAX_SILENCE_S is not yet too long (the derivation's rule: more than that).
    assert close_silent_sessions(SILENT_AFTER) == 0
    assert rows() == [open_row]
    assert close_silent_sessions(SILENT_AFTER + timedelta(seconds=1)) == 1
    [closed] = rows()
    # Ground truth from the inputs: ended at the last charging record, 100 Wh counted.
    assert session_fields(closed) == (
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=CHARGING_S),
        SessionEnd.OFFLINE.value,
        100.0,
        36_000.0,
    )
    # The same as the derivation closes it when a record finally comes (in memory, no job).
    late = record(CHARGING_S + MAX_SILENCE_S + 1, "offline")
    [reference] = derive_sessions(None, [*records, late])
    assert (reference.started_at, reference.ended_at, reference.end_reason, reference.energy_wh) == (
        closed["started_at"],
        closed["ended_at"],
        closed["end_reason"],
        closed["energy_wh"],
    )
    # Idempotent: a second look, and the same batches delivered again, change nothing.
    assert close_silent_sessions(SILENT_AFTER + timedelta(hours=1)) == 0
    consume(records, SessionSink())
    assert rows() == [closed]
    # That late offline record (or any record that is not charging) starts nothing.
    consume([late], SessionSink())
    assert rows() == [closed]


def test_a_record_after_the_job_closed_the_session_starts_a_new_one(charge_point) -> None:  # noqa: F811
    consume(charge_then_go_offline(), SessionSink())
    assert close_silent_sessions(SILENT_AFTER + timedelta(seconds=1)) == 1
    [closed] = rows()
    # Records delayed upstream (e.g. in a poller's outbox): charging again at T0 + 50 s, within
    # MAX_SILENCE_S of the last online record. The job's decision stands: a new session, not the
    # closed one reopened; its baseline is not the offline record before it, so it counts from
    # its own first reading.
    consume(
        [
            record(50, "charging", energy_total_wh=1500.0, power_w=7000.0),
            record(51, "charging", energy_total_wh=1502.0, power_w=7200.0),
        ],
        SessionSink(),
    )
    first, second = rows()
    assert first == closed
    assert (second["started_at"], second["ended_at"], second["energy_wh"]) == (T0 + timedelta(seconds=50), None, 2.0)
    # That new session is silent too, later: the job closes it as well, at its own last record.
    assert close_silent_sessions(T0 + timedelta(seconds=51 + MAX_SILENCE_S + 1)) == 1
    assert [(row["ended_at"], row["end_reason"]) for row in rows()] == [
        (T0 + timedelta(seconds=CHARGING_S), SessionEnd.OFFLINE.value),
        (T0 + timedelta(seconds=51), SessionEnd.OFFLINE.value),
    ]


@pytest.mark.django_db(transaction=True)
async def test_the_job_runs_by_its_clock_once_the_consumer_has_caught_up(charge_point) -> None:  # noqa: F811
    from asgiref.sync import sync_to_async

    await sync_to_async(consume)(charge_then_go_offline(), SessionSink())
    now = [SILENT_AFTER - timedelta(minutes=5)]
    caught_up = [False]
    closer = SilentSessionCloser(clock=lambda: now[0], caught_up=lambda: caught_up[0], interval_s=0.05)

    async def open_sessions() -> int:
        return await ChargingSession.objects.filter(ended_at__isnull=True).acount()

    # A consumer still reading a backlog may hold records that continue the session: no look yet.
    now[0] = SILENT_AFTER + timedelta(minutes=5)
    assert await closer.close_once() == 0
    assert await open_sessions() == 1

    caught_up[0] = True
    now[0] = SILENT_AFTER - timedelta(seconds=1)
    stop = asyncio.Event()
    job = asyncio.create_task(closer(stop))
    try:
        await asyncio.sleep(0)  # the first look runs at once: not silent long enough yet
        assert await open_sessions() == 1
        now[0] = SILENT_AFTER + timedelta(seconds=1)  # the clock moves on: the next look closes it
        await wait_for(lambda: closer.closed == 1, what="the job to close the silent session")
        session = await ChargingSession.objects.aget()
        assert (session.ended_at, session.end_reason) == (T0 + timedelta(seconds=CHARGING_S), SessionEnd.OFFLINE)
    finally:
        stop.set()
        await asyncio.wait_for(job, 5)
    assert closer.closed == 1


@pytest.mark.production
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_job_waits_for_the_sink_that_read_the_session(charge_point, monkeypatch) -> None:  # noqa: F811
    """The worst interleaving: the sink has read the open session, the job runs, then the sink
    writes. The sink's row lock makes the job wait and then find the session moved on (its record
    at T0 + 100 s continues it); without the lock the job would close it and the sink reopen it."""
    assert connection.vendor == "postgresql"
    consume(charge_then_go_offline(), SessionSink())
    now = SILENT_AFTER + timedelta(seconds=1)  # silent by the stored row, not by the batch below
    outcome: dict[str, int] = {}  # the job's backend pid, and how many sessions it closed

    def run_job() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                outcome["pid"] = cursor.fetchone()[0]
            outcome["closed"] = close_silent_sessions(now)
        finally:
            connections.close_all()

    def job_waits_for_a_lock() -> bool:
        if "pid" not in outcome:
            return False
        with connection.cursor() as cursor:
            cursor.execute("SELECT cardinality(pg_blocking_pids(%s))", [outcome["pid"]])
            return cursor.fetchone()[0] > 0

    real_derive = sink_module.derive_sessions

    def derive_while_the_job_runs(*args: object, **kwargs: object) -> list:
        """The sink has read (and locked) the session: the job runs now, before the sink writes."""
        job.start()
        deadline = time.monotonic() + 10
        while job.is_alive() and not job_waits_for_a_lock():
            assert time.monotonic() < deadline, "the job neither finished nor waited"
            time.sleep(0.01)  # polling a condition
        return real_derive(*args, **kwargs)

    job = threading.Thread(target=run_job)
    monkeypatch.setattr(sink_module, "derive_sessions", derive_while_the_job_runs)
    consume([record(100, "charging", energy_total_wh=1200.0, power_w=7000.0)], SessionSink())
    job.join(10)
    assert outcome["closed"] == 0
    [session] = rows()
    assert session["ended_at"] is None
    assert session["last_online_at"] == T0 + timedelta(seconds=100)
    # Later, silent by its new last record, the job closes it there.
    assert close_silent_sessions(T0 + timedelta(seconds=100 + MAX_SILENCE_S + 1)) == 1
    assert rows()[0]["ended_at"] == T0 + timedelta(seconds=100)
