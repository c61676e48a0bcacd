"""Request pacing: how far apart a charger wants our requests, and what that costs one poll.

A profile declares its vendor's pacing (KEBA: >= 0.5 s between reads, >= 5 s between writes);
a charge point may override it. The connection enforces it (gateway/modbus/connection.py); this
module only works out the effective gaps and the time a poll needs at them, for the admin's
display and validation.
"""

import math
from dataclasses import dataclass

from gateway.choices import PollGroup
from gateway.modbus.planner import plan_reads
from gateway.profiles.spec import MAX_PACING_GAP_MS, ProfileSpec

SLOW_GROUP_INTERVAL_S = 300.0  # how often the poller reads the slow group (gateway/modbus/poller.py)


@dataclass(frozen=True)
class Pacing:
    """Least time between the answer to one request and the next request (and between writes)."""

    request_gap_ms: int = 0
    write_gap_ms: int = 0

    @property
    def paced(self) -> bool:
        return self.request_gap_ms > 0 or self.write_gap_ms > 0

    def describe(self) -> str:
        if not self.paced:
            return "back to back"
        return f"{self.request_gap_ms} ms between requests, {self.write_gap_ms} ms between writes"


def effective_pacing(profile: ProfileSpec, request_gap_ms: int | None, write_gap_ms: int | None) -> Pacing:
    """The profile's pacing, with a charge point's overrides (None: keep the vendor's)."""
    return Pacing(
        profile.request_gap_ms if request_gap_ms is None else request_gap_ms,
        profile.write_gap_ms if write_gap_ms is None else write_gap_ms,
    )


def pacing_problems(profile: ProfileSpec) -> list[str]:
    """What is wrong with a profile's pacing, as sentences (shared by the admin and imports)."""
    problems = []
    for name in ("request_gap_ms", "write_gap_ms"):
        value = getattr(profile, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_PACING_GAP_MS:
            problems.append(f"{name} must be a whole number of milliseconds from 0 to {MAX_PACING_GAP_MS}")
    if not isinstance(profile.pacing_source, str):
        problems.append("pacing_source must be text")
    if problems:
        return problems
    if (profile.request_gap_ms or profile.write_gap_ms) and not profile.pacing_source.strip():
        problems.append("pacing needs pacing_source: where the vendor asks for it")
    problem = write_gap_problem(profile, Pacing(profile.request_gap_ms, profile.write_gap_ms))
    if problem:
        problems.append(problem)
    return problems


def write_gap_problem(profile: ProfileSpec, pacing: Pacing) -> str | None:
    """A heartbeat that falls due more often than the write gap lets it be written, if any."""
    for heartbeat in profile.heartbeats:
        if isinstance(heartbeat.interval_s, int | float) and heartbeat.interval_s * 1000 < pacing.write_gap_ms:
            return (
                f"heartbeat {heartbeat.register!r} every {heartbeat.interval_s:g} s cannot keep "
                f"{pacing.write_gap_ms} ms between writes"
            )
    return None


@dataclass(frozen=True)
class PollTime:
    """The least time one poll takes at a pacing: its reads and heartbeat writes, spaced out."""

    reads: int
    writes: int
    slow_reads: int
    pacing: Pacing

    @property
    def ms(self) -> int:
        """One fast poll with its heartbeat writes.

        The next poll's first read waits one gap after this poll's last answer, so at a fixed rate
        every request of a poll costs a full gap. The write gap costs nothing here as long as each
        heartbeat comes less often than it (checked by write_gap_problem).
        """
        return (self.reads + self.writes) * self.pacing.request_gap_ms

    @property
    def slow_ms(self) -> int:
        """What the slow group adds to one poll every SLOW_GROUP_INTERVAL_S."""
        return self.slow_reads * self.pacing.request_gap_ms

    def describe(self) -> str:
        reads = f"{self.reads} read{'s' if self.reads != 1 else ''}"
        if not self.pacing.request_gap_ms:
            writes = f", writes {self.pacing.write_gap_ms} ms apart" if self.pacing.write_gap_ms else ""
            return f"{reads} back to back{writes}"
        writes = f" + {self.writes} heartbeat write{'s' if self.writes != 1 else ''}" if self.writes else ""
        text = f"{self.ms / 1000:.1f} s ({reads}{writes}, {self.pacing.request_gap_ms} ms apart)"
        if self.slow_reads:
            text += f"; the slow group adds {self.slow_ms / 1000:.1f} s every {SLOW_GROUP_INTERVAL_S / 60:.0f} min"
        return text


def poll_time(profile: ProfileSpec, pacing: Pacing, interval_ms: int | None = None) -> PollTime:
    """The time one poll needs at this pacing; heartbeats counted as often as they fall due in one
    interval (once each when no interval is given)."""
    writes = 0
    for heartbeat in profile.heartbeats:
        every_ms = heartbeat.interval_s * 1000
        writes += 1 if interval_ms is None or every_ms <= 0 else math.ceil(interval_ms / every_ms)
    return PollTime(
        reads=len(plan_reads(profile, (PollGroup.FAST,))),
        writes=writes,
        slow_reads=len(plan_reads(profile, (PollGroup.SLOW,))),
        pacing=pacing,
    )


def shortest_interval_ms(profile: ProfileSpec, pacing: Pacing) -> int | None:
    """The shortest poll interval that fits a poll at this pacing; None if heartbeats alone can't fit."""
    interval = poll_time(profile, pacing).ms
    for _ in range(100):
        needed = poll_time(profile, pacing, max(interval, 1)).ms
        if needed <= interval:
            return interval
        interval = needed
    return None


def interval_problem(profile: ProfileSpec, pacing: Pacing, interval_ms: int) -> str | None:
    """Why a poll interval cannot fit a poll at this pacing, with the ways out; None when it fits."""
    needed = poll_time(profile, pacing, interval_ms)
    if needed.ms <= interval_ms:
        return None
    shortest = shortest_interval_ms(profile, pacing)
    at_least = f"at least {math.ceil(shortest / 100) / 10:g} s" if shortest else "longer"
    return (
        f"At this charger's pacing one poll takes {needed.describe()}, longer than the "
        f"{interval_ms / 1000:g} s poll interval. Set the poll interval to {at_least}, move values that "
        f"change slowly (identity, settings) to the profile's slow group, or relax the pacing of this "
        f"charge point if the box copes (a request gap of 0 reads back to back, as evcc reads a KEBA)."
    )


def fitting_interval_ms(profile: ProfileSpec, pacing: Pacing, interval_ms: int) -> int:
    """interval_ms if a poll fits it, else the shortest that fits with 25 % headroom, in whole seconds."""
    if interval_problem(profile, pacing, interval_ms) is None:
        return interval_ms
    shortest = shortest_interval_ms(profile, pacing) or MAX_PACING_GAP_MS
    return max(interval_ms, math.ceil(shortest * 1.25 / 1000) * 1000)
