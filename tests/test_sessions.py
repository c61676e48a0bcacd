"""Charging sessions derived from scripted runs: the simulator's behaviour, ticked second by second
(its events say when a car starts charging and when it finishes), and hand-written records for
counter resets, faults and outages. The ground truth is the counter difference between the
records at those events, computed here from the records themselves."""

import random
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest

from gateway.choices import TELEMETRY_VALUE_ROLES, OperatorStatus
from gateway.history.store import save_history
from gateway.models import ChargingSession
from gateway.models.sessions import Meter, SessionEnd
from gateway.sessions.derive import MAX_SILENCE_S, SessionState, derive_sessions
from gateway.sessions.sink import SessionSink, newest_sessions, save_sessions
from gateway.simulator.behaviour import ChargePointBehaviour
from gateway.telemetry import build_record, format_ts

# Within the raw history's retention (the sink reads a session's baseline from the stored history).
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
SLUG = "cp-s1"
BOTH = ("energy_total_wh", "session_energy_wh")


def record(i: int, status: str, *, slug: str = SLUG, at: datetime | None = None, **values: float | None) -> dict:
    """A telemetry record (the fields sessions read) at T0 + i seconds, seq i."""
    return {
        "charge_point": slug,
        "site": "test-site",
        "ts": format_ts(at or T0 + timedelta(seconds=i)),
        "seq": i,
        "status": status,
        "values": {"power_w": values.get("power_w"), **{key: values.get(key) for key in BOTH}},
    }


def simulated_run(seed: int, seconds: int, meters: tuple[str, ...] = BOTH) -> tuple[list[dict], list[tuple]]:
    """One simulated charge point, a record a second (reporting only `meters`), and the sessions its
    events mark: (index of the first charging record, index of the finishing record, the
    simulator's own session energy at the finish)."""
    behaviour = ChargePointBehaviour(
        random.Random(seed), session_scale=0.01, start_busy=False, mean_fault_interval_s=1e15
    )
    records, sessions, started = [], [], None
    for i in range(seconds):
        events = behaviour.tick(1.0)
        values = behaviour.values()
        records.append(record(i, behaviour.status, power_w=values["power_w"], **{key: values[key] for key in meters}))
        for event in events:
            if event.kind == "charging_started":
                started = i
            elif event.kind == "session_finished":
                sessions.append((started, i, behaviour.session_energy_wh))
    assert len(sessions) >= 3, "the scripted run should hold several sessions"
    return records, sessions


def counter_difference(records: list[dict], first: int, last: int, meter: str) -> float:
    """The counter at the session's last record minus at the record before its first (the baseline)."""
    return records[last]["values"][meter] - records[first - 1]["values"][meter]


def derive_in_batches(records: list[dict], size: int = 37) -> list[SessionState]:
    """Derive as a consumer would: batch by batch, the newest session carried over, the record
    before a batch looked up in what came before (the stored history, for the sink)."""
    sessions: list[SessionState] = []
    by_ts = {(r["charge_point"], r["ts"]): i for i, r in enumerate(records)}

    def previous(slug: str, ts: datetime) -> dict | None:
        index = by_ts[(slug, format_ts(ts))]
        return records[index - 1] if index else None

    for start in range(0, len(records), size):
        latest = sessions[-1] if sessions else None
        for session in derive_sessions(latest, records[start : start + size], previous):
            if session is not latest:
                sessions.append(session)
    return sessions


@pytest.mark.parametrize(
    ("meters", "truth_meter"),
    [
        (BOTH, "energy_total_wh"),  # the meter total wins when there are both
        (("energy_total_wh",), "energy_total_wh"),  # e.g. Alfen, Schneider, Webasto
        (("session_energy_wh",), "session_energy_wh"),  # e.g. ABB Terra AC, Mennekes
    ],
)
def test_energy_is_the_counter_difference_between_the_start_and_the_end_of_each_session(
    meters: tuple[str, ...], truth_meter: str
) -> None:
    records, truth = simulated_run(seed=11, seconds=1800, meters=meters)
    sessions = [s for s in derive_in_batches(records) if not s.is_open]
    assert [(s.started_at, s.ended_at) for s in sessions] == [
        (T0 + timedelta(seconds=first), T0 + timedelta(seconds=last)) for first, last, _ in truth
    ]
    for session, (first, last, simulated_wh) in zip(sessions, truth, strict=True):
        assert session.meter == truth_meter
        assert session.energy_wh == pytest.approx(counter_difference(records, first, last, truth_meter), abs=1e-6)
        # What the simulated car received (its counters are rounded to 0.1 Wh).
        assert session.energy_wh == pytest.approx(simulated_wh, abs=0.2)
        assert session.end_reason == SessionEnd.FINISHED
        powers = [r["values"]["power_w"] for r in records[first : last + 1]]
        assert session.peak_power_w == max(powers)


def test_a_counter_reset_keeps_what_was_counted_before_it() -> None:
    total = [1000.0, 1100.0, 1200.0, 10.0, 110.0, 210.0]  # 360 kW for 5 s; the meter restarts from 10 Wh
    statuses = ["charging"] * 5 + ["finishing"]
    records = [record(i, s, energy_total_wh=wh) for i, (s, wh) in enumerate(zip(statuses, total, strict=True))]
    (session,) = derive_sessions(None, records)
    assert session.energy_wh == pytest.approx((1200 - 1000) + (210 - 10))
    # The same with the session counter, cleared mid-session by a charger restart.
    records = [record(i, s, session_energy_wh=wh) for i, (s, wh) in enumerate(zip(statuses, total, strict=True))]
    (session,) = derive_sessions(None, records)
    assert (session.meter, session.energy_wh) == (Meter.SESSION, pytest.approx(400.0))


def test_a_glitch_upwards_is_not_counted_as_energy() -> None:
    total = [5000.0, 5100.0, 99_000_000.0, 5300.0, 5400.0]  # one misread register
    statuses = ["charging"] * 4 + ["finishing"]
    records = [record(i, s, energy_total_wh=wh) for i, (s, wh) in enumerate(zip(statuses, total, strict=True))]
    (session,) = derive_sessions(None, records)
    assert session.energy_wh == pytest.approx(100 + 100)  # before the glitch, and after it


def test_a_fault_and_a_short_outage_keep_one_session_and_a_long_outage_ends_it() -> None:
    statuses = ["preparing", "charging", "faulted", "preparing", "charging", "offline", "charging", "finishing"]
    records = [record(i, s, energy_total_wh=100.0 * i) for i, s in enumerate(statuses)]
    (session,) = derive_sessions(None, records)
    assert (session.started_at, session.ended_at) == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=7))
    assert session.energy_wh == pytest.approx(700.0)  # from the preparing record's counter (the baseline)

    late = T0 + timedelta(seconds=3 + MAX_SILENCE_S + 1)
    records = [
        record(1, "charging", energy_total_wh=100.0),
        record(3, "charging", energy_total_wh=300.0),
        *[record(4 + i, "offline", at=T0 + timedelta(seconds=4 + i * 60)) for i in range(16)],
        record(100, "charging", at=late, energy_total_wh=300.0),  # back after 15 minutes: a new car
    ]
    first, second = derive_sessions(None, records)
    assert (first.ended_at, first.end_reason, first.energy_wh) == (T0 + timedelta(seconds=3), "offline", 200.0)
    assert (second.started_at, second.is_open) == (late, True)


def test_suspended_starts_a_session_and_preparing_alone_does_not() -> None:
    records = [record(0, "preparing"), record(1, "available")]  # a car that left without charging
    assert derive_sessions(None, records) == []
    records = [record(0, "preparing"), record(1, "suspended", energy_total_wh=7.0), record(2, "available")]
    (session,) = derive_sessions(None, records)
    assert (session.energy_wh, session.end_reason) == (0.0, SessionEnd.UNPLUGGED)


# --- stored by the sink ---------------------------------------------------------------------------


def rows() -> list[dict]:
    """Every stored session's fields (the derivation's state included), oldest first."""
    return list(ChargingSession.objects.order_by("started_at").values())


def consume(batch: list[dict], sink: SessionSink) -> None:
    """What the history group does with a batch: the history first, then the sessions."""
    save_history([full_record(r) for r in batch])
    save_sessions(batch, sink.unknown)


def full_record(partial: dict) -> dict:
    """A schema-valid record from the fields sessions read."""
    values = {role: partial["values"].get(role) for role in TELEMETRY_VALUE_ROLES}
    return {
        **build_record(charge_point=SLUG, site="test-site", profile="generic-ev-charger", seq=0, fields=None),
        **partial,
        "values": values,
    }


def batches(records: list[dict], size: int) -> list[list[dict]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@pytest.fixture
def charge_point(site, generic_profile):
    from tests.conftest import make_charge_point

    return make_charge_point(site, generic_profile, SLUG, 1502)


def test_a_restarted_consumer_continues_the_session_and_redelivered_batches_change_nothing(charge_point) -> None:
    records, truth = simulated_run(seed=5, seconds=1200)
    parts = batches(records, 50)
    # A session is open when the first consumer stops (before committing its last batch).
    cut = next(i for i, part in enumerate(parts) if i > 3 and part[-1]["status"] == OperatorStatus.CHARGING)
    first = SessionSink()
    for part in parts[: cut + 1]:
        consume(part, first)
    assert newest_sessions({SLUG})[SLUG].is_open
    # The next consumer is handed the uncommitted batch again, then the rest.
    second = SessionSink()
    for part in parts[cut:]:
        consume(part, second)
    stored = rows()
    closed = [row for row in stored if row["ended_at"] is not None]
    assert [(row["started_at"], row["ended_at"]) for row in closed] == [
        (T0 + timedelta(seconds=a), T0 + timedelta(seconds=b)) for a, b, _ in truth
    ]
    for row, (a, b, simulated_wh) in zip(closed, truth, strict=True):
        assert row["energy_wh"] == pytest.approx(counter_difference(records, a, b, "energy_total_wh"), abs=1e-6)
        assert row["energy_wh"] == pytest.approx(simulated_wh, abs=0.2)
        assert row["charge_point_id"] == charge_point.id
        assert row["site_slug"] == "test-site"
    # The same as one consumer deriving everything in memory.
    reference = [asdict(s) for s in derive_in_batches(records, 50)]
    assert [row["energy_wh"] for row in stored] == [s["energy_wh"] for s in reference]
    # Every batch once more (a consumer group reset): nothing changes.
    for part in parts:
        consume(part, SessionSink())
    assert rows() == stored


@pytest.mark.django_db(transaction=True)
async def test_the_sink_skips_unknown_charge_points_and_stores_known_ones(charge_point, caplog) -> None:
    sink = SessionSink()
    records = [record(0, "charging", energy_total_wh=10.0), record(1, "finishing", energy_total_wh=60.0)]
    strangers = [record(0, "charging", slug="nobody"), record(1, "charging", slug="nobody")]
    await sink(records + strangers)
    await sink(strangers)
    sessions = [s async for s in ChargingSession.objects.all()]
    assert [(s.charge_point_slug, s.energy_wh) for s in sessions] == [(SLUG, 50.0)]
    assert caplog.text.count("unknown charge point 'nobody'") == 1


@pytest.mark.django_db(transaction=True)
def test_one_open_session_per_charge_point_is_enforced_by_the_database(charge_point) -> None:
    from django.db import IntegrityError

    save_sessions([record(0, "charging", energy_total_wh=1.0)])
    session = ChargingSession.objects.get()
    session.pk = None
    with pytest.raises(IntegrityError):
        session.save()


@pytest.mark.production
def test_on_postgresql_a_restarted_consumer_continues_and_redelivery_changes_nothing(charge_point) -> None:
    """The same on PostgreSQL (the newest-session subquery, the bulk update, the partitioned history)."""
    from django.db import connection

    assert connection.vendor == "postgresql"
    test_a_restarted_consumer_continues_the_session_and_redelivered_batches_change_nothing(charge_point)
