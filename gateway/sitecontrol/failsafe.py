"""What each charger falls back to by itself when nobody controls it: pure arithmetic, no I/O.

When the controller, its poller or the meter dies, every charger that supports it drops to its
failsafe current once its watchdog lapses (the failsafe timeout). All of them may do so at once
and stay there indefinitely, with nobody measuring, so the failsafe shares must fit the limit on
their own, against the configured base load (not a measured one):

    room per phase = limit - margin - base load
    share per phase = room / (the chargers wired to that phase)
    a charger's share = the smallest share over its phases, floored to whole A (capped at its max)

If that is below a charger's minimum (a charger cannot signal less than 6 A, IEC 61851-1), the
chargers that cannot pause on failsafe (their failsafe register takes no 0 A: Webasto, Vestel,
Schneider) are reserved their minimum first, by priority (nothing lower can be written to them);
then the others by priority get their minimum while it fits on all their phases and the rest
0 A; the ones kept then share the room again the same way, if that gives each at least its
minimum. If even the ones that cannot pause do not fit at their minimum, each still gets it and
the plan's warning says by how much the failsafe currents exceed the room, on which phase.
docs/site-load-management.md has a worked example.
"""

import logging
import math
from dataclasses import dataclass

from gateway.choices import CommandAction
from gateway.profiles.spec import ProfileSpec

logger = logging.getLogger(__name__)

_EPS = 1e-9


@dataclass(frozen=True)
class FailsafeCharger:
    """One charger as the failsafe arithmetic needs it."""

    slug: str
    phases: tuple[bool, bool, bool]  # its wiring (not a car's narrower phases: any car may come)
    min_a: float
    priority: int = 0
    max_a: float | None = None  # the failsafe never exceeds what it takes anyway
    # Its failsafe command takes 0 A (KEBA, ABB): it may pause on failsafe. False (Webasto,
    # Vestel, Schneider: 6..32 A only): a 0 would be refused and the charger would keep its own
    # (vendor default) failsafe current, so it must get at least failsafe_min_a.
    can_pause_on_failsafe: bool = True
    # The lowest current above 0 A its failsafe command takes (the register's write minimum); a
    # current between 0 and this is refused by the charger. 0: no such bound known.
    failsafe_min_a: float = 0.0


@dataclass(frozen=True)
class FailsafePlan:
    """The failsafe current of each charger, and why not the configured one if not."""

    shares_a: dict[str, float]
    room_a: tuple[float, float, float]  # per phase: limit - margin - base load (≥ 0)
    configured: bool  # the site's failsafe_current_a was used as is
    warning: str | None = None


PHASE_NAMES = ("L1", "L2", "L3")


def plan_failsafe(
    limit_a: float,
    margin_a: float,
    base_load_a: float,
    chargers: list[FailsafeCharger],
    configured_a: float | None,
) -> FailsafePlan:
    """Each charger's failsafe current: the configured one if it fits, else the computed shares.

    Every current is one the charger's failsafe command takes: 0 A only where it can pause on
    failsafe, else at least its failsafe minimum, even when those minimums alone exceed the room
    (then the warning says by how much, on which phase: nothing lower can be written).
    """
    room = max(0.0, limit_a - margin_a - max(0.0, base_load_a))
    room_a = (room, room, room)
    left = f"{room:g} A left (limit {limit_a:g} A - margin {margin_a:g} A - base load {base_load_a:g} A)"
    if configured_a is not None:
        configured_a = max(0.0, float(configured_a))
        shares = {c.slug: _writable(c, configured_a) for c in chargers}
        loads = _loads(chargers, shares)
        if all(load <= room + _EPS for load in loads):
            return FailsafePlan(shares, room_a, True, _join(*_configured_notes(configured_a, chargers, shares)))
        worst = max(range(3), key=lambda index: loads[index])
        warning = (
            f"the failsafe current {configured_a:g} A does not fit: {_counts(chargers)[worst]} chargers on phase "
            f"{PHASE_NAMES[worst]} would take {loads[worst]:g} A of the {left}; using the computed shares"
        )
        computed = _computed(room, chargers)
        return FailsafePlan(computed, room_a, False, _join(warning, _overflow_warning(room, chargers, computed, left)))
    computed = _computed(room, chargers)
    return FailsafePlan(computed, room_a, False, _overflow_warning(room, chargers, computed, left))


def failsafe_shares(
    limit_a: float,
    margin_a: float,
    base_load_a: float,
    chargers: list[FailsafeCharger],
    configured_a: float | None,
) -> dict[str, float]:
    """slug -> the current it falls back to when nobody controls it (plan_failsafe's shares).

    A configured current that does not fit is replaced by the computed shares, with a WARNING in
    the log (plan_failsafe returns the warning for a status line).
    """
    plan = plan_failsafe(limit_a, margin_a, base_load_a, chargers, configured_a)
    if plan.warning:
        logger.warning("failsafe: %s", plan.warning)
    return plan.shares_a


def failsafe_timeout_s(site_timeout_s: float, profile: ProfileSpec | None) -> int | None:
    """The timeout to write to a charger of this profile: the site's, within the profile's range.

    None: the profile has no failsafe timeout to set. Never 0 (KEBA reads 0 as "off").
    """
    command = profile.command(CommandAction.SET_FAILSAFE_TIMEOUT) if profile is not None else None
    if command is None or not command.supported:
        return None
    timeout_s = max(1, round(site_timeout_s))
    if command.min_value is not None:
        timeout_s = max(timeout_s, math.ceil(command.min_value))
    if command.max_value is not None:
        timeout_s = min(timeout_s, math.floor(command.max_value))
    return timeout_s


def _phases(charger: FailsafeCharger) -> tuple[bool, bool, bool]:
    """A charger that names no phase is counted on all three: the safe side of bad input."""
    return charger.phases if any(charger.phases) else (True, True, True)


def _counts(chargers: list[FailsafeCharger]) -> list[int]:
    counts = [0, 0, 0]
    for charger in chargers:
        for index, on in enumerate(_phases(charger)):
            counts[index] += int(on)
    return counts


def _equal_shares(room: float, chargers: list[FailsafeCharger]) -> dict[str, float]:
    """Per phase room / chargers on it; each gets the smallest over its phases, whole A, ≤ its max."""
    counts = _counts(chargers)
    shares: dict[str, float] = {}
    for charger in chargers:
        share = min(room / counts[index] for index, on in enumerate(_phases(charger)) if on)
        share = float(math.floor(share + _EPS))
        if charger.max_a is not None:
            share = min(share, float(math.floor(charger.max_a + _EPS)))
        shares[charger.slug] = share
    return shares


def _least(charger: FailsafeCharger) -> float:
    """The least current above 0 A this charger may get on failsafe: its minimum (IEC 61851-1),
    or, for one that cannot pause on failsafe, the least its failsafe command takes."""
    if not charger.can_pause_on_failsafe:
        return charger.failsafe_min_a if charger.failsafe_min_a > 0 else charger.min_a
    return max(charger.min_a, charger.failsafe_min_a)


def _writable(charger: FailsafeCharger, current_a: float) -> float:
    """current_a made one the charger's failsafe command takes: a current it refuses becomes 0 A
    where it can pause on failsafe (it would not charge below its minimum anyway), else its least."""
    if current_a > 0 and current_a + _EPS >= charger.failsafe_min_a:
        return current_a
    if charger.can_pause_on_failsafe:
        return 0.0
    return _least(charger)


def _loads(chargers: list[FailsafeCharger], shares: dict[str, float]) -> list[float]:
    """Per phase, the sum of the failsafe currents of the chargers wired to it."""
    loads = [0.0, 0.0, 0.0]
    for charger in chargers:
        for index, on in enumerate(_phases(charger)):
            if on:
                loads[index] += shares[charger.slug]
    return loads


def _computed(room: float, chargers: list[FailsafeCharger]) -> dict[str, float]:
    shares = _equal_shares(room, chargers)
    if all(shares[c.slug] >= _least(c) for c in chargers):
        return shares
    # Not enough for everyone's minimum. The ones that cannot pause on failsafe get theirs whatever
    # it takes (a 0 A would be refused and leave them at the vendor's default, maybe 32 A); then
    # the others by priority while it fits; the rest 0 A.
    left = [room, room, room]
    kept: list[FailsafeCharger] = []
    fixed = sorted((c for c in chargers if not c.can_pause_on_failsafe), key=_rank)
    free = sorted((c for c in chargers if c.can_pause_on_failsafe), key=_rank)
    for charger in fixed + free:
        on = _phases(charger)
        least = _least(charger)
        if charger.can_pause_on_failsafe and not all(left[i] + _EPS >= least for i in range(3) if on[i]):
            continue
        kept.append(charger)
        for index in range(3):
            if on[index]:
                left[index] -= least
    result = {c.slug: 0.0 for c in chargers}
    again = _equal_shares(room, kept)
    if all(again[c.slug] >= _least(c) for c in kept):
        result.update(again)
    else:  # each kept one gets exactly its least (it fits by the loop above, unless the fixed ones alone do not)
        result.update({c.slug: _least(c) for c in kept})
    return result


def _rank(charger: FailsafeCharger) -> tuple[int, str]:
    return (-charger.priority, charger.slug)


def _overflow_warning(room: float, chargers: list[FailsafeCharger], shares: dict[str, float], left: str) -> str | None:
    """Said plainly when the failsafe currents exceed the room: only chargers that cannot pause on
    failsafe, at the least they take, can make them (the computed shares fit otherwise)."""
    loads = _loads(chargers, shares)
    over = [(PHASE_NAMES[i], loads[i] - room) for i in range(3) if loads[i] > room + _EPS]
    if not over:
        return None
    parts = [f"{round(excess, 2):g} A on phase {name}" for name, excess in over]
    by = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    fixed = [c.slug for c in sorted(chargers, key=_rank) if not c.can_pause_on_failsafe and shares[c.slug] > 0]
    named = ", ".join(fixed[:5]) + (f" and {len(fixed) - 5} more" if len(fixed) > 5 else "")
    return (
        f"the failsafe currents exceed the room by {by}: {named} cannot pause on failsafe (their failsafe "
        f"current takes no 0 A) and each gets the least it takes; the {left} is too little, so if they all "
        "fall back at once the site may go over its limit (raise the limit, lower the base load or remove chargers)"
    )


def _configured_notes(configured_a: float, chargers: list[FailsafeCharger], shares: dict[str, float]) -> list[str]:
    """What a configured current that fits does not give as is, charger by charger."""
    notes = []
    raised = [c for c in chargers if shares[c.slug] > configured_a]
    if raised:
        named = ", ".join(f"{c.slug} {shares[c.slug]:g} A" for c in sorted(raised, key=_rank))
        notes.append(
            f"the failsafe current {configured_a:g} A is below what some chargers' failsafe current takes and they "
            f"cannot pause on failsafe: they get their least ({named})"
        )
    below = sorted(c.slug for c in chargers if 0 < configured_a < c.min_a and shares[c.slug] <= configured_a)
    if below:
        zeroed = sorted(c.slug for c in chargers if c.slug in below and shares[c.slug] == 0)
        note = (
            f"the failsafe current {configured_a:g} A is below the minimum of {', '.join(below)}: "
            "they will not charge on failsafe"
        )
        if zeroed:
            note += f" ({', '.join(zeroed)} get 0 A: their failsafe current takes nothing between 0 and its minimum)"
        notes.append(note)
    return notes


def _join(*warnings: str | None) -> str | None:
    return "; ".join(w for w in warnings if w) or None
