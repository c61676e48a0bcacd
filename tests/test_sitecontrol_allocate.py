"""allocate(): the site's limit shared among its chargers (docs/site-load-management.md).

Ground truth is the arithmetic of the connection, worked out here from the inputs, never from
allocate()'s own figures: per phase, what the chargers are counted at plus the base load plus the
margin must stay within the limit (a 1-phase charger counts on its phase only, offline ones at
their failsafe current, unresponsive ones at their actual draw); with a kW limit, the total power
too. IEC 61851-1: a charger cannot signal less than its minimum (6 A), so nobody gets a current
strictly between 0 and its minimum.
"""

import itertools
import math
import random

from gateway.sitecontrol.allocate import (
    RAMP_UP_A,
    ChargerInput,
    ControlMemory,
    Decision,
    SiteInput,
    allocate,
)

THREE = (True, True, True)
L1 = (True, False, False)
L2 = (False, True, False)
L3 = (False, False, True)
TOLERANCE_A = 1e-6


def car(slug: str, phases=THREE, *, priority: int = 0, min_a: float = 6.0, max_a: float = 32.0, **kwargs):
    """A charger with a car that wants current (the usual case here)."""
    kwargs.setdefault("wants_current", True)
    return ChargerInput(slug, phases, min_a, max_a, priority=priority, **kwargs)


def room_a(site: SiteInput) -> list[float]:
    """What the chargers may take per phase: the limit less the margin and the base load."""
    return [site.limit_a - site.margin_a - max(0.0, base) for base in site.base_load_a]


def counted_a(charger: ChargerInput, decision: Decision) -> float:
    """What a charger draws per phase it is on, as the physics counts it."""
    if charger.offline:
        return charger.failsafe_a
    if not charger.responsive:
        return max(a for a, on in zip(charger.actual_a, charger.phases, strict=True) if on)
    return decision.current_a


def phase_sums_a(chargers: list[ChargerInput], decisions: list[Decision]) -> list[float]:
    sums = [0.0, 0.0, 0.0]
    for charger, decision in zip(chargers, decisions, strict=True):
        for index, on in enumerate(charger.phases):
            if on:
                sums[index] += counted_a(charger, decision)
    return sums


def reserved_a(chargers: list[ChargerInput]) -> list[float]:
    """Per phase, what the offline and unresponsive chargers alone are counted at."""
    sums = [0.0, 0.0, 0.0]
    for charger in chargers:
        if charger.offline or not charger.responsive:
            for index, on in enumerate(charger.phases):
                if on:
                    sums[index] += counted_a(charger, Decision(charger.slug, 0.0, "", ""))
    return sums


def power_w(site: SiteInput, chargers: list[ChargerInput], decisions: list[Decision]) -> float:
    return site.voltage_v * (sum(phase_sums_a(chargers, decisions)) + sum(max(0.0, b) for b in site.base_load_a))


def assert_within_limit(site: SiteInput, chargers: list[ChargerInput], decisions: list[Decision]) -> None:
    """Within the limit; or, if the counted-only chargers alone break it, nobody else gets any."""
    room = room_a(site)
    reserved = reserved_a(chargers)
    others = [
        (charger, decision)
        for charger, decision in zip(chargers, decisions, strict=True)
        if not charger.offline and charger.responsive
    ]
    sums = phase_sums_a(chargers, decisions)
    for index in range(3):
        if reserved[index] > room[index] + TOLERANCE_A:
            assert all(d.current_a == 0 for c, d in others if c.phases[index]), (index, decisions)
        else:
            assert sums[index] <= room[index] + TOLERANCE_A, (index, sums, room, decisions)
    if site.limit_kw is not None:
        base_w = site.voltage_v * (sum(reserved) + sum(max(0.0, b) for b in site.base_load_a))
        if base_w > site.limit_kw * 1000:
            assert all(d.current_a == 0 for _, d in others), decisions
        else:
            assert power_w(site, chargers, decisions) <= site.limit_kw * 1000 + TOLERANCE_A


def assert_whole_and_in_range(chargers: list[ChargerInput], decisions: list[Decision]) -> None:
    for charger, decision in zip(chargers, decisions, strict=True):
        if charger.offline or not charger.responsive:
            continue
        current = decision.current_a
        assert current == 0 or charger.min_a <= current <= charger.max_a, decision
        assert current == 0 or current == math.floor(current) or current == charger.min_a, decision
        if not charger.wants_current:
            assert current == 0 and decision.state == "idle", decision


def run(site: SiteInput, chargers: list[ChargerInput], memory: ControlMemory, periods: int) -> list[list[Decision]]:
    """Several periods on the same input, the chargers holding what they were told."""
    history = []
    for _ in range(periods):
        decisions = allocate(site, chargers, memory)
        assert_within_limit(site, chargers, decisions)
        assert_whole_and_in_range(chargers, decisions)
        history.append(decisions)
    return history


def currents(decisions: list[Decision]) -> dict[str, float]:
    return {d.slug: d.current_a for d in decisions}


def test_ten_chargers_at_63_a_through_a_building_load_step() -> None:
    """10 chargers behind 63 A per phase; the building steps from 10 A to 35 A and back."""
    chargers = [car(f"cp{i:02d}", priority=10 - i) for i in range(10)]
    memory = ControlMemory()
    quiet = SiteInput(limit_a=63, margin_a=1, base_load_a=(10, 10, 10))
    # 52 A left per phase: 8 chargers at their 6 A minimum (48 A), 9 would need 54 A.
    decisions = run(quiet, chargers, memory, 5)[-1]
    assert [d.current_a for d in decisions] == [6.0] * 8 + [0.0, 0.0]
    assert [d.state for d in decisions[8:]] == ["paused", "paused"]  # the two lowest priorities

    busy = SiteInput(limit_a=63, margin_a=1, base_load_a=(35, 35, 35))
    # 27 A left: 4 at 6 A (24 A), at once: a step up is cut in the same period.
    decisions = allocate(busy, chargers, memory)
    assert_within_limit(busy, chargers, decisions)
    assert [d.current_a for d in decisions] == [6.0] * 4 + [0.0] * 6

    # Fewer cars: 5 of them, the building back to 10 A: 52 A / 5 = 10.4 A each, reached by
    # ramping; the ones paused for room wait 2 periods with room before they resume.
    few = [c if i < 5 else ChargerInput(c.slug, THREE, 6, 32, priority=c.priority) for i, c in enumerate(chargers)]
    history = run(quiet, few, memory, 6)
    assert [d.state for d in history[0][4:5]] == ["waiting"]
    assert [d.state for d in history[1][4:5]] == ["charging"]
    assert [d.current_a for d in history[-1][:5]] == [10.0] * 5
    assert all(d.state == "idle" for d in history[-1][5:])


def test_nobody_between_zero_and_minimum_when_short() -> None:
    site = SiteInput(limit_a=20, margin_a=1, base_load_a=(0, 0, 0))  # 19 A
    chargers = [car("a", min_a=6), car("b", min_a=6), car("c", min_a=10)]
    # a and b at their minimum leave 7 A, below c's 10 A: c pauses, rather than everyone at
    # 6.33 A or c at 7 A; a and b share the 19 A: 9.5 A, floored.
    decisions = run(site, chargers, ControlMemory(), 5)[-1]
    assert currents(decisions) == {"a": 9.0, "b": 9.0, "c": 0.0}


def test_lowest_priorities_pause_first_and_ties_by_slug_whatever_the_order() -> None:
    site = SiteInput(limit_a=20, margin_a=2, base_load_a=(0, 0, 0))  # 18 A: room for 3 minimums
    chargers = [car("delta", priority=5), car("alpha"), car("charlie"), car("bravo"), car("echo", priority=1)]
    expected = None
    for seed in range(5):
        shuffled = list(chargers)
        random.Random(seed).shuffle(shuffled)
        decisions = {d.slug: d for d in allocate(site, shuffled, ControlMemory())}
        running = {slug for slug, d in decisions.items() if d.current_a > 0}
        expected = expected or running
        assert running == expected  # the same whatever order the chargers come in
    # delta (5) and echo (1) first; of the three at 0, alpha by slug.
    assert expected == {"delta", "echo", "alpha"}
    assert decisions["charlie"].reason == "paused: not enough room for its minimum (6 A)"


def test_single_phase_chargers_count_on_their_phase_only() -> None:
    # L1 is nearly full from the building; L2 and L3 are not.
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(50, 0, 0))  # room 12, 62, 62
    chargers = [car("three"), car("on-l2", L2), car("on-l3", L3), car("on-l1", L1)]
    decisions = currents(run(site, chargers, ControlMemory(), 10)[-1])
    # L1 holds 12 A: the 3-phase one and the L1 one at 6 A each.
    assert decisions["three"] == 6.0 and decisions["on-l1"] == 6.0
    # L2 and L3 have 62 - 6 = 56 A: the single-phase ones there get their full 32 A,
    # which they could not if they were counted on L1.
    assert decisions["on-l2"] == 32.0 and decisions["on-l3"] == 32.0

    # And a 1-phase charger on L1 does not take L2's room from a 3-phase one.
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(0, 42, 0))  # room 62, 20, 62
    chargers = [car("three"), car("on-l1", L1)]
    decisions = currents(run(site, chargers, ControlMemory(), 10)[-1])
    assert decisions == {"three": 20.0, "on-l1": 32.0}


def test_limit_kw_caps_the_total_power() -> None:
    # 100 A per phase would allow 32 A each; a 22 kW curtailment does not.
    site = SiteInput(limit_a=100, margin_a=0, base_load_a=(2, 2, 2), limit_kw=22.0, voltage_v=230.0)
    chargers = [car("a"), car("b"), car("c")]
    decisions = run(site, chargers, ControlMemory(), 10)[-1]
    total_w = 230.0 * (3 * sum(d.current_a for d in decisions) + 6)
    assert total_w <= 22_000
    # (22000 W / 230 V - 6 A) / 9 phase-currents = 9.96 A: 9 A each, not less.
    assert [d.current_a for d in decisions] == [9.0, 9.0, 9.0]


def test_no_flapping_over_100_periods_of_steady_input() -> None:
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(17.3, 12.8, 9.1))
    chargers = [car(f"cp{i}", [THREE, L1, L2, L3][i % 4], priority=i % 3, max_a=[32, 16][i % 2]) for i in range(10)]
    memory = ControlMemory()
    history = run(site, chargers, memory, 110)
    settled = [currents(d) for d in history[10:]]
    assert all(s == settled[0] for s in settled)


def test_no_flapping_on_a_noisy_building_load() -> None:
    """A building load that wanders ±0.4 A around a steady level: nobody changes back and forth."""
    chargers = [car(f"cp{i}", priority=i % 2) for i in range(6)]
    memory = ControlMemory()
    noise = random.Random(12)
    history = []
    for _ in range(110):
        base = tuple(20.0 + noise.uniform(-0.4, 0.4) for _ in range(3))
        site = SiteInput(limit_a=63, margin_a=1, base_load_a=base)
        decisions = allocate(site, chargers, memory)
        assert_within_limit(site, chargers, decisions)
        history.append(currents(decisions))
    for slug in history[0]:
        values = [h[slug] for h in history[10:]]
        changes = [b - a for a, b in itertools.pairwise(values) if b != a]
        reversals = sum(1 for a, b in itertools.pairwise(changes) if (a > 0) != (b > 0))
        assert reversals <= 1, (slug, values)


def test_increases_ramp_decreases_are_immediate() -> None:
    chargers = [car("a"), car("b")]
    memory = ControlMemory()
    busy = SiteInput(limit_a=63, margin_a=1, base_load_a=(50, 50, 50))  # 12 A: 6 + 6
    run(busy, chargers, memory, 3)
    quiet = SiteInput(limit_a=63, margin_a=1, base_load_a=(2, 2, 2))  # 60 A: 30 + 30
    steps = [currents(d)["a"] for d in run(quiet, chargers, memory, 8)]
    assert steps == [10.0, 14.0, 18.0, 22.0, 26.0, 30.0, 30.0, 30.0]
    assert all(b - a <= RAMP_UP_A for a, b in zip([6.0, *steps], steps, strict=False))
    decisions = allocate(busy, chargers, memory)  # the building steps up: down in one period
    assert currents(decisions) == {"a": 6.0, "b": 6.0}
    assert_within_limit(busy, chargers, decisions)


def test_overrides_are_taken_first_but_never_break_the_limit() -> None:
    site = SiteInput(limit_a=41, margin_a=1, base_load_a=(0, 0, 0))  # 40 A
    chargers = [car("fleet-van", override_a=32.0), car("boss", priority=9), car("visitor")]
    history = run(site, chargers, ControlMemory(), 10)
    final = currents(history[-1])
    # The override first (ramped), the rest share 8 A: the higher priority keeps charging.
    assert final == {"fleet-van": 32.0, "boss": 8.0, "visitor": 0.0}
    assert history[-1][0].override and history[-1][0].state == "charging"

    # An override asking more than the site has gets what there is, never more.
    tight = SiteInput(limit_a=21, margin_a=1, base_load_a=(0, 0, 0))  # 20 A
    decisions = run(tight, chargers, ControlMemory(), 10)[-1]
    assert currents(decisions)["fleet-van"] == 20.0
    assert "limited to 20 A" in decisions[0].reason
    # An override of 0 A pauses it.
    paused = [car("fleet-van", override_a=0.0), car("boss")]
    decisions = allocate(site, paused, ControlMemory())
    assert decisions[0].current_a == 0 and decisions[0].state == "paused"


def test_unresponsive_chargers_count_at_their_actual_draw() -> None:
    site = SiteInput(limit_a=41, margin_a=1, base_load_a=(0, 0, 0))  # 40 A
    chargers = [car("stuck", responsive=False, actual_a=(21.0, 20.4, 19.8)), car("ok")]
    decisions = run(site, chargers, ControlMemory(), 8)[-1]
    assert decisions[0].state == "unresponsive" and decisions[0].current_a == 21.0
    assert decisions[1].current_a == 19.0  # 40 - 21 on the most loaded phase


def test_offline_chargers_count_at_their_failsafe_current() -> None:
    site = SiteInput(limit_a=41, margin_a=1, base_load_a=(0, 0, 0))
    chargers = [car("gone", offline=True, failsafe_a=10.0), car("on-l1", L1, offline=True, failsafe_a=16.0), car("ok")]
    decisions = run(site, chargers, ControlMemory(), 8)[-1]
    assert [d.state for d in decisions] == ["offline", "offline", "charging"]
    assert decisions[2].current_a == 14.0  # L1: 40 - 10 - 16


def test_reserved_ones_alone_over_the_limit_pause_everyone_else() -> None:
    site = SiteInput(limit_a=21, margin_a=1, base_load_a=(0, 0, 0))
    chargers = [car("stuck", responsive=False, actual_a=(24.0, 24.0, 24.0)), car("a"), car("b", override_a=16.0)]
    decisions = allocate(site, chargers, ControlMemory())
    assert [d.current_a for d in decisions[1:]] == [0.0, 0.0]


def test_a_paused_charger_resumes_after_two_periods_of_room() -> None:
    chargers = [car("high", priority=2), car("low")]
    memory = ControlMemory()
    short = SiteInput(limit_a=13, margin_a=1, base_load_a=(0, 0, 0))  # 12 A: both minimums, no more
    short_one = SiteInput(limit_a=10, margin_a=1, base_load_a=(0, 0, 0))  # 9 A: only one
    assert currents(allocate(short_one, chargers, memory)) == {"high": 6.0, "low": 0.0}
    # 12 A: room for low's minimum, but not its minimum + 1 A: it stays paused.
    for _ in range(5):
        assert currents(allocate(short, chargers, memory))["low"] == 0.0
    roomy = SiteInput(limit_a=14, margin_a=1, base_load_a=(0, 0, 0))  # 13 A: 6 + 7
    assert allocate(roomy, chargers, memory)[1].state == "waiting"
    assert allocate(short_one, chargers, memory)[1].state == "paused"  # the room went: votes reset
    assert allocate(roomy, chargers, memory)[1].state == "waiting"
    assert allocate(roomy, chargers, memory)[1].current_a == 6.0


def test_idle_chargers_are_parked_and_a_new_car_starts_in_one_period() -> None:
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(0, 0, 0))
    memory = ControlMemory()
    empty = [car("a"), car("b", wants_current=False)]
    decisions = allocate(site, empty, memory)
    assert decisions[1] == Decision("b", 0.0, "idle", decisions[1].reason) and decisions[1].current_a == 0
    arrived = [car("a"), car("b")]
    assert allocate(site, arrived, memory)[1].current_a == 6.0  # no resume wait for a new car


def test_randomized_sites_keep_every_invariant() -> None:
    """Many random sites over several periods: the limit, the minimums, the maximums, the ramp,
    and the priority order of who pauses (with a fresh controller, so no hysteresis state)."""
    rng = random.Random(20240612)
    for _ in range(400):
        limit = rng.choice([16.0, 25.0, 32.0, 40.0, 63.0, 100.0, 160.0])
        site_args = {
            "limit_a": limit,
            "margin_a": rng.choice([0.0, 0.5, 1.0, 2.0]),
            "limit_kw": rng.choice([None, None, limit * 0.4, limit * 0.6]),
        }
        chargers = []
        for index in range(rng.randint(1, 14)):
            min_a = rng.choice([6.0, 6.0, 6.0, 8.0, 10.0, 6.5])
            kind = rng.random()
            chargers.append(
                ChargerInput(
                    slug=f"cp{index:02d}",
                    phases=rng.choice([THREE, THREE, L1, L2, L3]),
                    min_a=min_a,
                    max_a=rng.choice([min_a, 13.0, 16.0, 20.5, 32.0]) if min_a <= 13 else 32.0,
                    priority=rng.randint(0, 3),
                    wants_current=rng.random() < 0.85,
                    actual_a=tuple(rng.uniform(0, 16) for _ in range(3)),
                    responsive=kind > 0.05,
                    offline=0.05 <= kind < 0.1,
                    failsafe_a=rng.choice([0.0, 6.0, 8.0]),
                    override_a=rng.choice([None] * 8 + [0.0, 10.0, 40.0]),
                )
            )
        memory = ControlMemory()
        previous: dict[str, float] = {}
        for period in range(6):
            site = SiteInput(base_load_a=tuple(rng.uniform(0, limit * 0.6) for _ in range(3)), **site_args)
            decisions = allocate(site, chargers, memory)
            assert [d.slug for d in decisions] == [c.slug for c in chargers]
            assert_within_limit(site, chargers, decisions)
            assert_whole_and_in_range(chargers, decisions)
            for charger, decision in zip(chargers, decisions, strict=True):
                before = previous.get(charger.slug, 0.0)
                if decision.state == "charging" and before > 0:
                    assert decision.current_a - before <= RAMP_UP_A + TOLERANCE_A
                if decision.state == "charging" and before == 0:
                    assert decision.current_a <= max(charger.min_a, RAMP_UP_A)
                if charger.override_a is not None and decision.state == "charging":
                    assert decision.current_a <= max(charger.override_a, charger.min_a)
            previous = {d.slug: d.current_a for d in decisions if d.state == "charging"}
            if period == 0:
                assert_pauses_follow_priority(site, chargers, decisions)


def assert_pauses_follow_priority(site: SiteInput, chargers: list[ChargerInput], decisions: list[Decision]) -> None:
    """A charger paused for room would not fit even if every lower-priority one were paused:
    the counted ones, the overrides and the minimums of those at its priority or above leave no
    room for its minimum on one of its phases (or under the kW limit)."""
    room = [*room_a(site), math.inf]
    if site.limit_kw is not None:
        # the kW limit in phase-amperes, less the base load and the margin (the documented rule)
        room[3] = site.limit_kw * 1000 / site.voltage_v - sum(max(0.0, b) for b in site.base_load_a) - 3 * site.margin_a

    def add(total: list[float], charger: ChargerInput, current_a: float) -> None:
        for index, on in enumerate(charger.phases):
            if on:
                total[index] += current_a
                total[3] += current_a

    fixed = [0.0, 0.0, 0.0, 0.0]
    for charger, decision in zip(chargers, decisions, strict=True):
        if charger.offline or not charger.responsive:
            add(fixed, charger, counted_a(charger, decision))
        elif charger.override_a is not None and decision.current_a > 0:
            # taken first; it holds its whole target while it ramps (at most what it asked, in range)
            add(fixed, charger, min(max(charger.override_a, charger.min_a), charger.max_a))
    for charger, decision in zip(chargers, decisions, strict=True):
        if decision.state != "paused" or charger.override_a is not None:
            continue
        need = list(fixed)
        for other, other_decision in zip(chargers, decisions, strict=True):
            if other_decision.state == "charging" and other.override_a is None and other.priority >= charger.priority:
                add(need, other, other.min_a)
        add(need, charger, charger.min_a)
        weights = [*charger.phases, True]
        blocked = any(on and need[index] > room[index] + TOLERANCE_A for index, on in enumerate(weights))
        assert blocked, (charger, decisions)


def test_a_restarted_controller_ramps_from_what_the_chargers_hold() -> None:
    """No memory (the poller restarted): the verified limits are the starting point, so cars
    charging at 16 A are neither dropped to 6 A nor jumped to their share."""
    site = SiteInput(limit_a=61, margin_a=1, base_load_a=(0, 0, 0))  # 60 A: 30 A each
    chargers = [car("a", in_force_a=16.0), car("b", in_force_a=16.0)]
    assert currents(allocate(site, chargers, ControlMemory())) == {"a": 20.0, "b": 20.0}


def test_the_ramp_counts_from_what_the_charger_verified() -> None:
    """An increase the controller could not deliver (held back behind a decrease) is not added to
    the next one: the charger verified 6 A, so the next step is at most 10 A, not 14 A."""
    site = SiteInput(limit_a=61, margin_a=1, base_load_a=(0, 0, 0))
    memory = ControlMemory()
    assert currents(allocate(site, [car("a", in_force_a=6.0)], memory)) == {"a": 10.0}
    assert currents(allocate(site, [car("a", in_force_a=6.0)], memory)) == {"a": 10.0}
    assert currents(allocate(site, [car("a", in_force_a=10.0)], memory)) == {"a": 14.0}


# --- cars that draw less than their share -------------------------------------------------------


def test_a_car_that_draws_less_leaves_its_room_to_the_others() -> None:
    """Four 3-phase chargers, 57 A per phase of room (63 − 1 − 5): 14.25 A each, floored to 14.
    cp0's car takes only 6 A (an 11 kW car on a 1-phase charger, a full battery): with its demand
    known at 9 A (6 A + 3 A of headroom), the other three share 57 − 9 = 48 A: 16 A each."""
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(5, 5, 5))
    blind = [car(f"cp{i}") for i in range(4)]
    assert [d.current_a for d in run(site, blind, ControlMemory(), 6)[-1]] == [14.0] * 4
    knowing = [car("cp0", demand_a=9.0)] + [car(f"cp{i}") for i in range(1, 4)]
    decisions = run(site, knowing, ControlMemory(), 6)[-1]
    assert [d.current_a for d in decisions] == [9.0, 16.0, 16.0, 16.0]
    assert "draws less" in decisions[0].reason


def test_a_limited_car_still_gets_room_nobody_else_can_use() -> None:
    """Room to spare (57 A per phase, two cars): cp1 is at its 32 A maximum, and the 25 A it
    leaves go back to the limited car rather than stay unused (its release then needs no ramp)."""
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(5, 5, 5))
    chargers = [car("cp0", demand_a=9.0), car("cp1")]
    assert [d.current_a for d in run(site, chargers, ControlMemory(), 10)[-1]] == [25.0, 32.0]


def test_a_demand_is_never_below_the_minimum_nor_above_the_maximum() -> None:
    """A full battery (demand 3 A) keeps the charger's 6 A minimum, so the car can start again; the
    other of two 1-phase chargers on L1 (room 57 A) takes the rest up to its 32 A maximum."""
    site = SiteInput(limit_a=63, margin_a=1, base_load_a=(5, 5, 5))
    chargers = [car("full", L1, demand_a=3.0), car("other", L1), car("big", L2, demand_a=40.0)]
    decisions = run(site, chargers, ControlMemory(), 10)[-1]
    # L1: 57 − 6 = 51 A for "other", capped at its 32 A; then 57 − 32 = 25 A goes back to "full"
    # (capped at its 32 A maximum, floored). L2 alone: "big" at its 32 A maximum.
    assert currents(decisions) == {"full": 25.0, "other": 32.0, "big": 32.0}
    tight = SiteInput(limit_a=32, margin_a=1, base_load_a=(5, 5, 5))  # 26 A on L1
    decisions = run(tight, chargers, ControlMemory(), 10)[-1]
    assert currents(decisions)["full"] == 6.0 and currents(decisions)["other"] == 20.0
