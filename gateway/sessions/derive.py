"""Charging sessions from one charge point's records, in order: pure (no I/O), so every rule is testable.

When a session starts and ends follows OCPP 1.6's connector statuses, which OperatorStatus mirrors:
- it **starts** at the first record that is `charging` or `suspended` (SuspendedEV/EVSE: a
  transaction is running, energy is merely paused). `preparing` is a car plugged in (or a card
  shown) before the transaction starts: no session yet, as a car may leave without charging;
- it **ends** at the first record that is `finishing` (OCPP: "the transaction has stopped", the car
  is still plugged in), `available` (unplugged) or `unavailable` (out of service); the end record's
  counter still counts;
- it **stays open** through `preparing` and `faulted` (a fault that clears resumes the same car's
  charge) and through `offline` for up to MAX_SILENCE_S: a charger that comes back within that
  time continues its session. Once a record arrives more than MAX_SILENCE_S after the last
  record that was not offline (offline records, or nothing at all because the poller stopped),
  the session ends at that last online record (reason `offline`). If no record comes at all, the
  history group's job (gateway/sessions/silence.py) ends it the same way by the clock; a closed
  session is never reopened: a later `charging` record starts a new one.

Energy is the difference of one counter: the meter total (energy_total_wh) if the charger reports
one, else its session energy (session_energy_wh), chosen at the first reading and kept for the
whole session (no mixing of two counters). The baseline is the record just before the session's
first one (the energy of that poll interval is the session's), unless that record is offline or
older than MAX_SILENCE_S: then the first record's. A drop of the
counter by more than RESET_TOLERANCE_WH is a reset (a replaced meter, a firmware restart, a
session counter cleared): what was counted so far is kept (meter_offset_wh) and counting restarts
from the new value; the energy between the last reading before the reset and the first after is
lost (one poll interval at most), never invented. A jump upwards faster than MAX_POWER_W could
deliver is a glitch or a meter swap: counting restarts from it the same way instead of adding it.

Records of a charge point are applied in (ts, seq) order, and those at or before the newest
session's last applied (ts, seq) are ignored: batches redelivered after a consumer restart change
nothing, and the state a restarted consumer needs is all in the session (the database row).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.choices import OperatorStatus
from gateway.models.sessions import Meter, SessionEnd
from gateway.telemetry import Record, parse_ts

STARTS = frozenset({OperatorStatus.CHARGING.value, OperatorStatus.SUSPENDED.value})
ENDS: dict[str, str] = {
    OperatorStatus.FINISHING.value: SessionEnd.FINISHED.value,
    OperatorStatus.AVAILABLE.value: SessionEnd.UNPLUGGED.value,
    OperatorStatus.UNAVAILABLE.value: SessionEnd.UNAVAILABLE.value,
}
OFFLINE = OperatorStatus.OFFLINE.value
# A charger silent or offline longer than this has lost its session: a car rarely waits 15 minutes
# for a charger to come back, and a poller down that long cannot say what happened meanwhile.
MAX_SILENCE_S = 15 * 60
# Counters quantised (a float32 register, a kWh register with 0.01 resolution) may read a little
# lower once: that is not a reset.
RESET_TOLERANCE_WH = 1.0
# Beyond any charger's power (a 350 kW DC charger, with margin): a faster rise is not energy.
MAX_POWER_W = 500_000.0
JUMP_MARGIN_WH = 100.0


@dataclass
class SessionState:
    """One session and the state its derivation continues from (a ChargingSession row's fields)."""

    charge_point: str
    site: str
    started_at: datetime
    last_ts: datetime
    last_seq: int
    last_online_at: datetime
    ended_at: datetime | None = None
    end_reason: str = ""
    energy_wh: float = 0.0
    peak_power_w: float | None = None
    meter: str = Meter.NONE.value
    meter_start_wh: float | None = None
    meter_last_wh: float | None = None
    meter_offset_wh: float = 0.0
    id: int | None = None  # the database row, once stored

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    def applied(self, ts: datetime, seq: int) -> bool:
        """True if the record at (ts, seq) is at or before the last one this session applied."""
        return (ts, seq) <= (self.last_ts, self.last_seq)

    def close(self, at: datetime, reason: str) -> None:
        self.ended_at = at
        self.end_reason = reason

    def apply(self, record: Record, ts: datetime) -> None:
        """Count one record of this open session: its counter, its power, its time."""
        values = record.get("values") or {}
        self.count(values, ts)
        power_w = values.get("power_w")
        if power_w is not None and (self.peak_power_w is None or power_w > self.peak_power_w):
            self.peak_power_w = float(power_w)
        if record["status"] != OFFLINE:
            self.last_online_at = ts
        self.last_ts, self.last_seq = ts, record["seq"]

    def count(self, values: dict, ts: datetime) -> None:
        """Take one reading of the session's counter (the first one chooses the counter)."""
        if not self.meter:
            if values.get(Meter.TOTAL.value) is not None:
                self.meter = Meter.TOTAL.value
            elif values.get(Meter.SESSION.value) is not None:
                self.meter = Meter.SESSION.value
            else:
                return
        reading = values.get(self.meter)
        if reading is None:  # this record could not read the counter (partial, offline)
            return
        reading = float(reading)
        if self.meter_start_wh is None or self.meter_last_wh is None:
            self.meter_start_wh = self.meter_last_wh = reading
            return
        if reading < self.meter_last_wh - RESET_TOLERANCE_WH or reading - self.meter_last_wh > self._max_rise_wh(ts):
            self.meter_offset_wh += self.meter_last_wh - self.meter_start_wh
            self.meter_start_wh = self.meter_last_wh = reading
        elif reading > self.meter_last_wh:
            self.meter_last_wh = reading
        self.energy_wh = self.meter_offset_wh + (self.meter_last_wh - self.meter_start_wh)

    def _max_rise_wh(self, ts: datetime) -> float:
        """The most a counter can rise since the last record (the time since includes any silence)."""
        hours = max((ts - self.last_ts).total_seconds(), 0.0) / 3600.0
        return MAX_POWER_W * hours + JUMP_MARGIN_WH


def record_key(record: Record) -> tuple[str, int]:
    """Order of one charge point's records: ts (ISO Z with ms, so text order is time order), then seq."""
    return record["ts"], record["seq"]


# (charge point slug, ts) -> the charge point's last record before ts, e.g. from the stored history.
PreviousRecord = Callable[[str, datetime], Record | None]


def derive_sessions(
    latest: SessionState | None, records: Iterable[Record], previous_record: PreviousRecord | None = None
) -> list[SessionState]:
    """Apply one charge point's records to its newest session (open or closed, or None).

    Returns the sessions that changed, oldest first: `latest` if it did, then any that started.
    Records at or before `latest`'s last applied (ts, seq) are ignored (redelivered). A session's
    counter baseline is the record just before its first one (the energy of that poll interval
    is the session's), from this batch or else from `previous_record`.
    """
    changed: list[SessionState] = []
    current = latest if latest is not None and latest.is_open else None
    ordered = sorted(records, key=record_key)
    for index, record in enumerate(ordered):
        status = record["status"]
        if current is None and status not in STARTS:
            continue  # nothing to start or continue: the common case, no timestamp parsed
        ts = parse_ts(record["ts"])
        newest = current or latest
        if newest is not None and newest.applied(ts, record["seq"]):
            continue
        if current is not None and (ts - current.last_online_at).total_seconds() > MAX_SILENCE_S:
            current.close(current.last_online_at, SessionEnd.OFFLINE.value)
            _note(changed, current)
            current = None
            if status not in STARTS:
                continue
        if current is None:
            if index:
                before = ordered[index - 1]
            else:
                before = previous_record(record["charge_point"], ts) if previous_record else None
            current = latest = start_session(record, ts, before)
        current.apply(record, ts)
        _note(changed, current)
        if status in ENDS:
            current.close(ts, ENDS[status])
            current = None
    return changed


def start_session(record: Record, ts: datetime, before: Record | None) -> SessionState:
    """A session starting at `record`, its counter baseline from `before` (the record just before it)
    if that one can vouch for it: online, and not before a silence."""
    session = SessionState(
        charge_point=record["charge_point"],
        site=record.get("site") or "",
        started_at=ts,
        last_ts=ts,
        last_seq=record["seq"],
        last_online_at=ts,
    )
    if before is not None and before["status"] != OFFLINE:
        before_ts = parse_ts(before["ts"])
        if timedelta(0) <= ts - before_ts <= timedelta(seconds=MAX_SILENCE_S):
            session.last_ts = before_ts  # the rise to the first record is checked over this interval
            session.count(before.get("values") or {}, before_ts)
    return session


def _note(changed: list[SessionState], session: SessionState) -> None:
    if not any(other is session for other in changed):
        changed.append(session)
