"""Share a site's limit among its chargers: pure arithmetic, no I/O (the controller's decision).

PINNED INTERFACE (DESIGN12): SiteInput, ChargerInput, Decision, ControlMemory, allocate().
The rules are in allocate()'s docstring; docs/site-load-management.md explains them to operators
with the numbers below.

The work per period is O(n log n) in the number of chargers (one sort for the ranking, and the
water-filling sorts each constraint's breakpoints at most four times), plain Python.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.sitecontrol.demand import DEMAND_HEADROOM_A

Phases = tuple[float, float, float]

# An increase is at most this much per period per charger: a step up in many cars at once is
# the one a meter sees late, so it comes in steps the next period can still correct.
RAMP_UP_A = 4.0
# After a decrease, a charger goes up again only when its fair share is this much above the next
# whole ampere: a share hovering around a whole ampere then holds instead of flapping by 1 A.
# (Without a decrease before, it takes its floored share: steady input is not kept below it.)
UP_DEADBAND_A = 0.5
# A charger paused for lack of room resumes only when its minimum plus this was there ...
RESUME_EXTRA_A = 1.0
# ... for this many consecutive periods: a car is not started and stopped on noise.
RESUME_PERIODS = 2
# Float noise in sums of amperes; far below anything a charger resolves.
_EPS = 1e-9
# The kW constraint is the fourth "phase": index of it in the room vectors.
_POWER = 3


@dataclass(frozen=True)
class SiteInput:
    """What the controller knows of the site this period."""

    limit_a: float  # per phase
    margin_a: float  # kept free below the limit
    base_load_a: Phases  # the draw that is not the chargers' (meter - chargers, or the configured base load)
    limit_kw: float | None = None
    voltage_v: float = 230.0  # per phase, for limit_kw


@dataclass(frozen=True)
class ChargerInput:
    """One charger as the controller sees it this period."""

    slug: str
    # Which site phases it draws on: its wiring, narrowed to the phases a 1-phase car draws on.
    phases: tuple[bool, bool, bool]
    min_a: float  # the least it can charge at (profile's set_current_limit min_value, or the per-session minimum)
    max_a: float  # the most it takes (profile's max_value, capped by the installation maximum)
    priority: int = 0  # higher keeps charging when the site is short
    wants_current: bool = False  # a vehicle is connected that is charging or waiting for current
    actual_a: Phases = (0.0, 0.0, 0.0)  # measured, per site phase
    in_force_a: float | None = None  # the allocation the charger holds now (verified); None: unknown
    responsive: bool = True  # False: it ignored a write (read-back mismatch): counted at its actual draw
    override_a: float | None = None  # an operator's override in force
    offline: bool = False  # no fresh record: counted at its failsafe current (it may fall back to it)
    failsafe_a: float = 0.0  # what it falls back to by itself
    # What its car takes when it draws less than its limit (demand.DemandTracker); None: unknown,
    # it may take its full share.
    demand_a: float | None = None


@dataclass(frozen=True)
class Decision:
    """The current one charger should hold (0: paused) and why, in words an operator reads."""

    slug: str
    current_a: float
    state: str  # a messages.CHARGER_STATES value: charging, paused, waiting, idle, offline, unresponsive
    reason: str
    # True when an operator's override decided it: the controller appends " until <time>" to the reason.
    override: bool = False


@dataclass
class ControlMemory:
    """What allocate() keeps between periods (hysteresis and ramp state), per site."""

    # slug -> consecutive periods the room to resume it was there
    resume_votes: dict[str, int] = field(default_factory=dict)
    # slug -> the last allocation decided
    last_a: dict[str, float] = field(default_factory=dict)
    # slug -> why it got what it got last period (allocate's own: "charging", "paused_room",
    # "waiting", "idle", "offline", "unresponsive", "override"); a charger paused for lack of room
    # needs resume votes, a newly arrived car does not.
    last_state: dict[str, str] = field(default_factory=dict)
    # chargers whose last change was a decrease: their next increase needs UP_DEADBAND_A
    lowered: set[str] = field(default_factory=set)


@dataclass
class _Candidate:
    """A charger that wants current this period, with what allocate() works out for it."""

    charger: ChargerInput
    weights: tuple[int, int, int, int]  # per phase (0/1) and for the kW constraint (its phase count)
    held_a: float  # what it holds now (0: not charging)
    lo_a: float  # its minimum
    hi_a: float  # its maximum (never below its minimum)
    target_a: float = 0.0  # its fair share (water-filling), before hysteresis and ramp
    demand_a: float | None = None  # its car's demand, within [lo, hi] (None: unknown)


def allocate(site: SiteInput, chargers: list[ChargerInput], memory: ControlMemory) -> list[Decision]:
    """One Decision per charger, in the order given; updates `memory` for the next period.

    The rules, in order (docs/site-load-management.md):
    1. Room per phase = limit - margin - base load (a negative base load counts as 0); with
       limit_kw also Σ phases × current × voltage ≤ limit_kw·1000 - (base load + margin) power.
    2. Offline chargers are counted at their failsafe current, unresponsive ones at their actual
       draw (the largest of their phases), on each of their phases; nothing is sent to them.
    3. Chargers without a vehicle are idle and parked at 0 A: a car that arrives starts when the
       controller gives it room, within one period.
    4. Overrides are taken first, by priority: clamped to [minimum, maximum] and to the room left;
       no room for the minimum: 0 A.
    5. The rest by rank (priority high first; at equal priority the ones charging first, then
       slug): each gets its minimum while it fits on all its phases (and the kW limit), else it
       is paused. What is left is shared by water-filling: equal currents, each capped at its
       maximum and by the phases it uses (max-min fair). Priority decides who pauses, not who
       gets more. A car known to draw less than its share (demand_a) is capped at its demand
       first; what is still left then goes back to it.
    6. Hysteresis: a charger paused for lack of room resumes only when its minimum + 1 A fitted
       for 2 consecutive periods ("waiting" meanwhile; a newly arrived car waits for nobody);
       a charging charger goes down at once when its share falls below what it holds, and after
       such a decrease goes up again only when its share is 1.5 A above it (otherwise to its
       floored share); an increase is at most +4 A per period.
    7. Currents are whole amperes, floored; never between 0 and the charger's minimum.
    Every decision is at most the charger's fair share, so the decisions fit whenever the
    reserved ones (rule 2) alone fit.
    """
    room = _site_room(site)
    decisions: dict[str, Decision] = {}
    next_state: dict[str, str] = {}
    wanting: list[_Candidate] = []

    # Rules 2 and 3: what is counted whatever happens, and who wants nothing.
    for charger in chargers:
        weights = _weights(charger.phases)
        if charger.offline:
            counted_a = max(0.0, charger.failsafe_a)
            _take(room, weights, counted_a)
            decisions[charger.slug] = Decision(
                charger.slug, counted_a, "offline", f"offline: counted at its failsafe current ({_amps(counted_a)})"
            )
            next_state[charger.slug] = "offline"
        elif not charger.responsive:
            counted_a = _actual_max_a(charger)
            _take(room, weights, counted_a)
            decisions[charger.slug] = Decision(
                charger.slug,
                counted_a,
                "unresponsive",
                f"unresponsive: ignored a write, counted at its actual draw ({_amps(counted_a)})",
            )
            next_state[charger.slug] = "unresponsive"
        elif not charger.wants_current:
            decisions[charger.slug] = Decision(charger.slug, 0.0, "idle", "idle: no vehicle charging (parked at 0 A)")
            next_state[charger.slug] = "idle"
        else:
            lo_a = max(0.0, charger.min_a)
            hi_a = max(lo_a, charger.max_a)
            demand_a = None if charger.demand_a is None else min(hi_a, max(lo_a, charger.demand_a))
            wanting.append(_Candidate(charger, weights, _held_a(charger, memory), lo_a, hi_a, demand_a=demand_a))

    wanting.sort(key=lambda c: (-c.charger.priority, c.held_a <= 0, c.charger.slug))

    # Rule 4: overrides first, by rank, never beyond the room.
    sharing: list[_Candidate] = []
    for candidate in wanting:
        if candidate.charger.override_a is None:
            sharing.append(candidate)
            continue
        decisions[candidate.charger.slug] = _override_decision(candidate, room)
        next_state[candidate.charger.slug] = "override"

    # Rule 5: minimums by rank; room_new also holds back the minimum of a higher-ranked charger
    # still waiting to resume, so a newcomer below it does not start only to be paused again.
    room_new = list(room)
    admitted: list[_Candidate] = []
    for candidate in sharing:
        slug = candidate.charger.slug
        charging = candidate.held_a > 0
        needs_votes = not charging and memory.last_state.get(slug) in ("paused_room", "waiting")
        if charging:
            fits = _fits(room, candidate.weights, candidate.lo_a)
        elif needs_votes:
            fits = _fits(room_new, candidate.weights, candidate.lo_a + RESUME_EXTRA_A)
        else:
            fits = _fits(room_new, candidate.weights, candidate.lo_a)
        if not fits:
            decisions[slug] = Decision(
                slug, 0.0, "paused", f"paused: not enough room for its minimum ({_amps(candidate.lo_a)})"
            )
            next_state[slug] = "paused_room"
            continue
        votes = memory.resume_votes.get(slug, 0) + 1
        if needs_votes and votes < RESUME_PERIODS:
            memory.resume_votes[slug] = votes
            _take(room_new, candidate.weights, candidate.lo_a)
            decisions[slug] = Decision(
                slug,
                0.0,
                "waiting",
                f"waiting: room for its minimum + {_amps(RESUME_EXTRA_A)} seen {votes} of {RESUME_PERIODS} periods",
            )
            next_state[slug] = "waiting"
            continue
        admitted.append(candidate)
        _take(room, candidate.weights, candidate.lo_a)
        _take(room_new, candidate.weights, candidate.lo_a)

    # The fair shares: water-filling over what is left after the overrides and the minimums of
    # the ones waiting to resume (so nobody ramps into the room they resume into next period).
    # The admitted minimums are the water-filling's floor: counted in it, not taken twice.
    for candidate in admitted:
        _give(room_new, candidate.weights, candidate.lo_a)
    _share_by_demand(admitted, room_new)

    # Rules 6 and 7: hysteresis, ramp, whole amperes.
    for candidate in admitted:
        decision = _sharing_decision(candidate, candidate.charger.slug in memory.lowered)
        if decision.current_a < candidate.held_a:
            memory.lowered.add(decision.slug)
        elif decision.current_a > candidate.held_a:
            memory.lowered.discard(decision.slug)
        decisions[decision.slug] = decision
        next_state[decision.slug] = "charging"

    _remember(memory, decisions, next_state)
    return [decisions[charger.slug] for charger in chargers]


def _site_room(site: SiteInput) -> list[float]:
    """Rule 1: the room per phase, and in phase-amperes (W / V) under the kW limit (inf: none)."""
    base = [max(0.0, a) for a in site.base_load_a]
    room = [site.limit_a - site.margin_a - b for b in base]
    if site.limit_kw is None or site.voltage_v <= 0:
        room.append(math.inf)
    else:
        room.append(site.limit_kw * 1000.0 / site.voltage_v - sum(base) - 3 * site.margin_a)
    return room


def _phases(phases: tuple[bool, bool, bool]) -> tuple[bool, bool, bool]:
    """A charger that names no phase is counted on all three: the safe side of bad input."""
    return phases if any(phases) else (True, True, True)


def _actual_max_a(charger: ChargerInput) -> float:
    """Its actual draw on the most loaded of its phases."""
    on = _phases(charger.phases)
    return max((max(0.0, charger.actual_a[index]) for index in range(3) if on[index]), default=0.0)


def _weights(phases: tuple[bool, bool, bool]) -> tuple[int, int, int, int]:
    on = _phases(phases)
    return (int(on[0]), int(on[1]), int(on[2]), sum(on))


def _take(room: list[float], weights: tuple[int, int, int, int], current_a: float) -> None:
    for index, weight in enumerate(weights):
        room[index] -= weight * current_a


def _give(room: list[float], weights: tuple[int, int, int, int], current_a: float) -> None:
    for index, weight in enumerate(weights):
        room[index] += weight * current_a


def _fits(room: list[float], weights: tuple[int, int, int, int], current_a: float) -> bool:
    return all(weight == 0 or weight * current_a <= room[index] + _EPS for index, weight in enumerate(weights))


def _largest_a(room: list[float], weights: tuple[int, int, int, int]) -> float:
    """The most current a charger with these weights fits in the room."""
    return min(room[index] / weight for index, weight in enumerate(weights) if weight)


def _whole_a(current_a: float, min_a: float) -> float:
    """Floored to whole amperes, but never below the minimum (a fractional minimum stays)."""
    whole = float(math.floor(current_a + _EPS))
    return whole if whole >= min_a else min_a


def _amps(current_a: float) -> str:
    return f"{current_a:g} A"


def _held_a(charger: ChargerInput, memory: ControlMemory) -> float:
    """What it holds now: the last decision, else (a restarted controller) its verified limit."""
    if charger.slug in memory.last_a:
        return memory.last_a[charger.slug]
    if charger.in_force_a is not None and charger.in_force_a > 0:
        return float(math.floor(charger.in_force_a + _EPS))
    return 0.0


def _ramp_ceiling_a(candidate: _Candidate) -> float:
    """The most it may go to this period: +RAMP_UP_A over what it holds (from 0: its minimum).

    If the charger verified less than the last decision (an increase held back), the ramp starts
    from what it verified, so two periods' ramps never land in one write.
    """
    base_a = candidate.held_a
    in_force_a = candidate.charger.in_force_a
    if in_force_a is not None and 0 <= in_force_a < base_a:
        base_a = in_force_a
    return max(candidate.lo_a, base_a + RAMP_UP_A)


def _override_decision(candidate: _Candidate, room: list[float]) -> Decision:
    """Rule 4: the operator's current, within the charger's range and the site's room."""
    charger = candidate.charger
    asked_a = charger.override_a or 0.0
    if asked_a <= 0:
        return Decision(charger.slug, 0.0, "paused", "paused: override 0 A", override=True)
    wanted_a = min(max(asked_a, candidate.lo_a), candidate.hi_a)
    fitting_a = min(wanted_a, _largest_a(room, candidate.weights))
    if fitting_a + _EPS < candidate.lo_a:
        return Decision(
            charger.slug,
            0.0,
            "paused",
            f"paused: override {_amps(asked_a)}, not enough room for its minimum ({_amps(candidate.lo_a)})",
            override=True,
        )
    target_a = _whole_a(fitting_a, candidate.lo_a)
    _take(room, candidate.weights, target_a)  # the whole target is held for it while it ramps
    current_a = (
        target_a
        if target_a <= candidate.held_a
        else min(target_a, _whole_a(_ramp_ceiling_a(candidate), candidate.lo_a))
    )
    if target_a < wanted_a:
        reason = f"override {_amps(asked_a)}, limited to {_amps(target_a)} by the site's room"
    elif target_a != asked_a:
        reason = f"override {_amps(asked_a)}, within its range ({_amps(target_a)})"
    else:
        reason = f"override {_amps(asked_a)}"
    if current_a < target_a:
        reason += f", ramping up (+{_amps(RAMP_UP_A)} per period)"
    return Decision(charger.slug, current_a, "charging", reason, override=True)


def _max_level(items: Iterable[tuple[int, float, float]], capacity: float) -> float:
    """The highest level L with Σ weight × clamp(L, lo, hi) ≤ capacity (inf: everyone at hi).

    The sum is piecewise linear and rising in L; sweep its breakpoints in order.
    """
    total = 0.0
    events: list[tuple[float, int]] = []
    for weight, lo, hi in items:
        total += weight * lo
        if hi > lo:
            events.append((lo, weight))
            events.append((hi, -weight))
    if total >= capacity:
        return -math.inf
    events.sort()
    slope = 0
    level = -math.inf
    for at, change in events:
        if slope > 0:
            reached = total + slope * (at - level)
            if reached > capacity:
                return level + (capacity - total) / slope
            total = reached
        level = at
        slope += change
    return math.inf


def _water_fill(admitted: list[_Candidate], room: list[float]) -> None:
    """Equal currents for all, each within [lo, hi]; a constraint that fills freezes its chargers.

    At most four rounds (three phases and the kW limit), each O(n log n).
    """
    open_constraints = [index for index, capacity in enumerate(room) if capacity != math.inf]
    load = [0.0, 0.0, 0.0, 0.0]  # of the frozen chargers
    remaining = list(admitted)
    while remaining:
        level = math.inf
        binding: list[int] = []
        for index in open_constraints:
            items = [(c.weights[index], c.lo_a, c.hi_a) for c in remaining if c.weights[index]]
            if not items:
                continue
            reach = _max_level(items, room[index] - load[index])
            if reach < level:
                level, binding = reach, [index]
            elif reach == level:
                binding.append(index)
        if level == math.inf:
            for candidate in remaining:
                candidate.target_a = candidate.hi_a
            return
        still: list[_Candidate] = []
        for candidate in remaining:
            if any(candidate.weights[index] for index in binding):
                candidate.target_a = min(max(level, candidate.lo_a), candidate.hi_a)
                for index, weight in enumerate(candidate.weights):
                    load[index] += weight * candidate.target_a
            else:
                still.append(candidate)
        open_constraints = [index for index in open_constraints if index not in binding]
        remaining = still


def _share_by_demand(admitted: list[_Candidate], room: list[float]) -> None:
    """Water-filling with each limited car capped at its demand, then what is left shared again
    over everyone (the first pass's shares as floors, up to each maximum).

    The second pass only raises chargers on constraints the first left unfilled: on a full one
    the floors already take all of it, so a car that wants more never loses to a capped one.
    """
    capped = [c for c in admitted if c.demand_a is not None and c.demand_a < c.hi_a]
    if not capped:
        _water_fill(admitted, room)
        return
    full_hi = [c.hi_a for c in admitted]
    for candidate in capped:
        candidate.hi_a = candidate.demand_a  # type: ignore[assignment]
    _water_fill(admitted, room)
    floors = [c.lo_a for c in admitted]
    for candidate, hi_a in zip(admitted, full_hi, strict=True):
        candidate.lo_a, candidate.hi_a = candidate.target_a, hi_a
    _water_fill(admitted, room)
    for candidate, lo_a in zip(admitted, floors, strict=True):
        candidate.lo_a = lo_a


def _sharing_decision(candidate: _Candidate, lowered: bool) -> Decision:
    """Rules 6 and 7 for a charger that shares: never above its fair share, so never over.

    `lowered`: its last change was a decrease, so an increase needs the dead band.
    """
    slug = candidate.charger.slug
    target_a = candidate.target_a
    held_a = candidate.held_a
    down_a = _whole_a(target_a, candidate.lo_a)
    if held_a <= 0:
        current_a = min(down_a, _whole_a(_ramp_ceiling_a(candidate), candidate.lo_a))
    elif down_a < held_a:
        current_a = down_a  # decreases at once
    else:
        band_a = UP_DEADBAND_A if lowered else 0.0
        up_a = _whole_a(max(target_a - band_a, candidate.lo_a), candidate.lo_a)
        if up_a > held_a:
            current_a = max(held_a, min(up_a, _whole_a(_ramp_ceiling_a(candidate), candidate.lo_a)))
        else:
            current_a = max(held_a, candidate.lo_a)  # within the dead band: hold
    if current_a < down_a and current_a < _whole_a(target_a - (UP_DEADBAND_A if lowered else 0.0), 0):
        reason = f"ramping up to {_amps(down_a)} (+{_amps(RAMP_UP_A)} per period)"
    elif current_a >= candidate.hi_a - _EPS or down_a >= math.floor(candidate.hi_a + _EPS):
        reason = f"at its maximum ({_amps(current_a)})"
    elif candidate.demand_a is not None and target_a <= candidate.demand_a + _EPS:
        reason = f"its car draws less: its draw + {_amps(DEMAND_HEADROOM_A)} ({_amps(current_a)})"
    else:
        reason = f"fair share of the site's room ({_amps(current_a)})"
    return Decision(slug, current_a, "charging", reason)


def _remember(memory: ControlMemory, decisions: dict[str, Decision], next_state: dict[str, str]) -> None:
    """Keep what the next period needs; forget chargers that left the site."""
    for slug, decision in decisions.items():
        if next_state[slug] in ("offline", "unresponsive"):
            # Counted, not decided: when it is back, it starts from what it verified.
            memory.last_a.pop(slug, None)
        else:
            memory.last_a[slug] = decision.current_a
        if next_state[slug] != "waiting":
            memory.resume_votes.pop(slug, None)
    memory.last_state = dict(next_state)
    for slug in [slug for slug in memory.last_a if slug not in decisions]:
        del memory.last_a[slug]
    for slug in [slug for slug in memory.resume_votes if slug not in decisions]:
        del memory.resume_votes[slug]
    memory.lowered &= {slug for slug, state in next_state.items() if state == "charging"}
