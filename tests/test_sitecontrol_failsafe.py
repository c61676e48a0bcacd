"""The failsafe arithmetic: what each charger falls back to by itself when nobody controls it.

Ground truth: all chargers may fall back at once and stay there with nobody measuring, so the
failsafe currents must fit the limit on their own, per phase, against the configured base load:
Σ failsafe currents of the chargers wired to a phase ≤ limit - margin - base load. IEC 61851-1: a
charger cannot signal less than its minimum, so each failsafe current is 0 or at least the minimum.
The worked example is docs/site-load-management.md's.
"""

import logging
import random

from gateway.choices import CommandAction
from gateway.profiles.spec import CommandSpec, ProfileSpec
from gateway.sitecontrol.failsafe import FailsafeCharger, failsafe_shares, failsafe_timeout_s, plan_failsafe

THREE = (True, True, True)
L1 = (True, False, False)
L2 = (False, True, False)
L3 = (False, False, True)


def phase_sums_a(chargers: list[FailsafeCharger], shares: dict[str, float]) -> list[float]:
    sums = [0.0, 0.0, 0.0]
    for charger in chargers:
        for index, on in enumerate(charger.phases):
            if on:
                sums[index] += shares[charger.slug]
    return sums


def test_the_worked_example_ten_three_phase_chargers_at_63_a() -> None:
    """63 A, margin 1 A, base load 10 A: 52 A per phase for 10 chargers is 5.2 A each, below
    6 A; 52 // 6 = 8 chargers keep 6 A (52 / 8 = 6.5, floored), by priority; 2 get 0 A."""
    chargers = [FailsafeCharger(f"cp{i:02d}", THREE, 6.0, priority=1 if i in (8, 9) else 0) for i in range(10)]
    shares = failsafe_shares(63, 1, 10, chargers, None)
    assert shares == {**{f"cp{i:02d}": 6.0 for i in range(8)}, "cp06": 0.0, "cp07": 0.0, "cp08": 6.0, "cp09": 6.0}
    assert phase_sums_a(chargers, shares) == [48.0, 48.0, 48.0]


def test_the_worked_example_with_single_phase_chargers() -> None:
    """6 three-phase, 2 on L1, 1 on L2, 1 on L3: L1 has 8 chargers (52 / 8 = 6.5), L2 and L3
    have 7 (7.43): the three-phase and the L1 ones get 6 A, the L2 and L3 ones 7 A."""
    chargers = [FailsafeCharger(f"cp{i}", THREE, 6.0) for i in range(6)]
    chargers += [FailsafeCharger("l1a", L1, 6.0), FailsafeCharger("l1b", L1, 6.0)]
    chargers += [FailsafeCharger("l2", L2, 6.0), FailsafeCharger("l3", L3, 6.0)]
    shares = failsafe_shares(63, 1, 10, chargers, None)
    assert [shares[f"cp{i}"] for i in range(6)] == [6.0] * 6
    assert (shares["l1a"], shares["l1b"], shares["l2"], shares["l3"]) == (6.0, 6.0, 7.0, 7.0)
    assert phase_sums_a(chargers, shares) == [48.0, 43.0, 43.0]


def test_single_phase_chargers_share_only_their_phase() -> None:
    chargers = [FailsafeCharger(f"a{i}", L1, 6.0) for i in range(3)] + [FailsafeCharger("b", L2, 6.0, max_a=32)]
    shares = failsafe_shares(63, 1, 10, chargers, None)
    # L1: 52 / 3 = 17.3 -> 17 A; L2 has one charger: 52 A, capped at its 32 A.
    assert shares == {"a0": 17.0, "a1": 17.0, "a2": 17.0, "b": 32.0}


def test_a_configured_current_that_fits_is_used() -> None:
    chargers = [FailsafeCharger(f"cp{i}", THREE, 6.0) for i in range(8)]
    plan = plan_failsafe(63, 1, 10, chargers, 6.0)  # 8 × 6 = 48 ≤ 52
    assert plan.configured and plan.warning is None
    assert set(plan.shares_a.values()) == {6.0}
    # 0 A (every charger pauses on failsafe) always fits.
    assert set(plan_failsafe(63, 1, 10, chargers, 0.0).shares_a.values()) == {0.0}
    # 5 A fits (40 A) but no charger can signal it (IEC 61851-1: 6 A): kept, and said.
    below = plan_failsafe(63, 1, 10, chargers, 5.0)
    assert below.configured and set(below.shares_a.values()) == {5.0}
    assert "below the minimum" in below.warning


def test_a_configured_current_that_does_not_fit_falls_back_with_a_warning(caplog) -> None:
    chargers = [FailsafeCharger(f"cp{i}", THREE, 6.0) for i in range(8)]
    plan = plan_failsafe(63, 1, 10, chargers, 8.0)  # 8 × 8 = 64 > 52
    assert not plan.configured
    assert "does not fit" in plan.warning and "64 A" in plan.warning and "52 A" in plan.warning
    assert set(plan.shares_a.values()) == {6.0}  # 52 / 8 = 6.5, floored
    with caplog.at_level(logging.WARNING, logger="gateway.sitecontrol.failsafe"):
        assert failsafe_shares(63, 1, 10, chargers, 8.0) == plan.shares_a
    assert "does not fit" in caplog.text


def test_randomized_shares_always_fit_and_respect_the_minimums() -> None:
    rng = random.Random(61851)
    for _ in range(500):
        limit = rng.choice([16.0, 25.0, 32.0, 40.0, 63.0, 100.0, 250.0])
        margin = rng.choice([0.0, 1.0, 2.0])
        base = rng.uniform(0, limit * 0.7)
        chargers = [
            FailsafeCharger(
                f"cp{i:02d}",
                rng.choice([THREE, THREE, L1, L2, L3]),
                rng.choice([6.0, 6.0, 8.0, 10.0]),
                priority=rng.randint(0, 3),
                max_a=rng.choice([None, 16.0, 32.0]),
            )
            for i in range(rng.randint(1, 25))
        ]
        configured = rng.choice([None, None, 0.0, 6.0, 10.0, 16.0])
        shares = failsafe_shares(limit, margin, base, chargers, configured)
        room = limit - margin - base
        assert all(total <= max(0.0, room) + 1e-9 for total in phase_sums_a(chargers, shares))
        for charger in chargers:
            share = shares[charger.slug]
            assert share == int(share) or share == charger.min_a
            if configured is None or share != configured:
                assert share == 0 or charger.min_a <= share, (charger, share)
            if charger.max_a is not None and configured is None:
                assert share <= charger.max_a
        # Who falls to 0 A: never one of higher priority while a lower one keeps a current.
        if configured is None:
            zeros = [c.priority for c in chargers if shares[c.slug] == 0]
            running = [c.priority for c in chargers if shares[c.slug] > 0]
            same = all(c.phases == THREE for c in chargers) and len({c.min_a for c in chargers}) == 1
            if zeros and running and same:
                assert max(zeros) <= min(running)


def profile_with_timeout(min_value: float | None, max_value: float | None, supported: bool = True) -> ProfileSpec:
    command = CommandSpec(
        action=CommandAction.SET_FAILSAFE_TIMEOUT,
        register="set_failsafe_timeout" if supported else "",
        min_value=min_value,
        max_value=max_value,
        unsupported="" if supported else "no timeout register",
    )
    return ProfileSpec(slug="p", name="p", registers=(), commands=(command,))


def test_failsafe_timeout_within_the_profile_range() -> None:
    # KEBA 5018: 10..600 s, from 20 s in the shipped profile (its heartbeat rewrites it every 10 s).
    keba = profile_with_timeout(20, 600)
    assert failsafe_timeout_s(30, keba) == 30
    assert failsafe_timeout_s(10, keba) == 20
    assert failsafe_timeout_s(3600, keba) == 600
    # ABB 4106h: 10..65535 s.
    assert failsafe_timeout_s(10, profile_with_timeout(10, 65535)) == 10
    # No timeout register (Schneider) or no profile: nothing to write.
    assert failsafe_timeout_s(30, profile_with_timeout(None, None, supported=False)) is None
    assert failsafe_timeout_s(30, None) is None
    # Never 0: KEBA reads 0 as "failsafe off".
    assert failsafe_timeout_s(0, profile_with_timeout(None, None)) == 1


# --- chargers whose failsafe current cannot be 0 A ------------------------------------------
# Vendor ranges of set_failsafe_current (the shipped profiles, their sources): Webasto NEXT 2000,
# Vestel EVC04 2000 and Schneider EVlink 4006 take 6..32 A only; KEBA P30 5016 and ABB Terra AC
# 4109h take 0 or 6..32 A. A 0 A written to the first three is refused and the charger keeps its
# own failsafe current (the vendor's default, possibly its full rating).


def fixed(slug: str, phases=THREE, priority: int = 0) -> FailsafeCharger:
    """A Webasto/Vestel/Schneider: its failsafe current takes 6..32 A, no 0."""
    return FailsafeCharger(slug, phases, 6.0, priority, 32.0, can_pause_on_failsafe=False, failsafe_min_a=6.0)


def pausable(slug: str, phases=THREE, priority: int = 0) -> FailsafeCharger:
    """A KEBA/ABB: its failsafe current takes 0 or 6..32 A."""
    return FailsafeCharger(slug, phases, 6.0, priority, 32.0, can_pause_on_failsafe=True, failsafe_min_a=6.0)


def test_chargers_that_cannot_pause_on_failsafe_are_reserved_their_minimum_first() -> None:
    """The worked example with 5 Webasto (priority 0) and 5 KEBA (priority 5): 52 A per phase.
    The Webastos cannot take 0 A: 5 × 6 = 30 A first; 22 A left: 3 KEBAs by priority (18 A); 2 KEBAs 0 A."""
    chargers = [fixed(f"web{i}") for i in range(5)] + [pausable(f"keba{i}", priority=5) for i in range(5)]
    plan = plan_failsafe(63, 1, 10, chargers, None)
    assert [plan.shares_a[f"web{i}"] for i in range(5)] == [6.0] * 5
    assert [plan.shares_a[f"keba{i}"] for i in range(5)] == [6.0, 6.0, 6.0, 0.0, 0.0]
    assert phase_sums_a(chargers, plan.shares_a) == [48.0, 48.0, 48.0]
    assert plan.warning is None


def test_when_the_ones_that_cannot_pause_do_not_fit_each_gets_its_minimum_and_the_overflow_is_said(caplog) -> None:
    """10 Webastos at 63 A, base 10 A, margin 1 A: 10 × 6 = 60 A on every phase, 8 A over the 52 A.
    Nothing lower than 6 A can be written, so each gets 6 A (not 0, which would leave the vendor's
    default), the KEBA pauses, and the warning says by how much, on which phase."""
    chargers = [fixed(f"web{i}") for i in range(10)] + [pausable("keba", priority=100)]
    plan = plan_failsafe(63, 1, 10, chargers, None)
    assert {plan.shares_a[f"web{i}"] for i in range(10)} == {6.0}
    assert plan.shares_a["keba"] == 0.0
    assert "exceed the room by 8 A on phase L1, 8 A on phase L2 and 8 A on phase L3" in plan.warning
    with caplog.at_level(logging.WARNING, logger="gateway.sitecontrol.failsafe"):
        failsafe_shares(63, 1, 10, chargers, None)
    assert "8 A on phase L1" in caplog.text
    # Single-phase ones on L1 only: L1 over, L2 and L3 untouched.
    chargers = [fixed(f"l1-{i}", L1) for i in range(3)] + [pausable("l2", L2)]
    plan = plan_failsafe(16, 1, 0, chargers, None)  # 15 A on L1 for 3 × 6 = 18 A
    # Not everyone's share reaches the minimum, so each kept one gets exactly its minimum (the L2 one too).
    assert plan.shares_a == {"l1-0": 6.0, "l1-1": 6.0, "l1-2": 6.0, "l2": 6.0}
    assert "exceed the room by 3 A on phase L1:" in plan.warning and "L2" not in plan.warning


def test_a_configured_current_below_what_a_charger_takes_is_made_writable_and_reported() -> None:
    chargers = [fixed("web0"), fixed("web1"), pausable("keba0"), pausable("keba1")]
    # 0 A: the KEBAs pause; the Webastos cannot, they get 6 A (12 A ≤ 52 A fits).
    plan = plan_failsafe(63, 1, 10, chargers, 0.0)
    assert plan.configured
    assert plan.shares_a == {"web0": 6.0, "web1": 6.0, "keba0": 0.0, "keba1": 0.0}
    assert "web0 6 A" in plan.warning and "web1 6 A" in plan.warning
    # 5 A: refused by all four registers (0 or 6..32, 6..32): the KEBAs get 0 A, the Webastos 6 A.
    plan = plan_failsafe(63, 1, 10, chargers, 5.0)
    assert plan.shares_a == {"web0": 6.0, "web1": 6.0, "keba0": 0.0, "keba1": 0.0}
    assert "will not charge on failsafe" in plan.warning
    # 0 A for 10 Webastos is 60 A: does not fit; the computed shares overflow too, and say so.
    plan = plan_failsafe(63, 1, 10, [fixed(f"web{i}") for i in range(10)], 0.0)
    assert not plan.configured and set(plan.shares_a.values()) == {6.0}
    assert "does not fit" in plan.warning and "exceed the room by 8 A on phase L1" in plan.warning


def test_randomized_failsafe_currents_are_writable_and_fit_unless_the_unpausable_alone_do_not() -> None:
    rng = random.Random(4006)
    for _ in range(500):
        limit = rng.choice([16.0, 25.0, 32.0, 40.0, 63.0, 100.0])
        base = rng.uniform(0, limit * 0.7)
        chargers = [
            FailsafeCharger(
                f"cp{i:02d}",
                rng.choice([THREE, THREE, L1, L2, L3]),
                rng.choice([6.0, 6.0, 8.0]),
                priority=rng.randint(0, 3),
                max_a=32.0,
                can_pause_on_failsafe=rng.random() < 0.5,
                failsafe_min_a=6.0,
            )
            for i in range(rng.randint(1, 20))
        ]
        configured = rng.choice([None, None, 0.0, 5.0, 6.0, 10.0])
        plan = plan_failsafe(limit, 1.0, base, chargers, configured)
        room = max(0.0, limit - 1.0 - base)
        # Writable: 0 only where it pauses on failsafe; never between 0 and 6 A.
        for charger in chargers:
            share = plan.shares_a[charger.slug]
            assert share == 0 or share >= 6.0, (charger, share)
            if not charger.can_pause_on_failsafe:
                assert share >= 6.0, (charger, share)
        sums = phase_sums_a(chargers, plan.shares_a)
        for index, name in enumerate(("L1", "L2", "L3")):
            unpausable = sum(6.0 for c in chargers if not c.can_pause_on_failsafe and c.phases[index])
            if unpausable <= room + 1e-9:
                assert sums[index] <= room + 1e-9, (sums, room)
            else:  # only the unpausable ones at 6 A on that phase, and the warning says the excess
                assert sums[index] == unpausable
                assert f"{round(unpausable - room, 2):g} A on phase {name}" in plan.warning


def test_the_shipped_profiles_say_which_chargers_can_pause_on_failsafe() -> None:
    """From the vendor ranges above: KEBA and ABB take 0 A, Webasto, Vestel and Schneider 6 A at least."""
    from types import SimpleNamespace

    from gateway.profiles.store import SHIPPED_DIR, read_spec_file
    from gateway.sitecontrol.config import charger_config

    charge_point = SimpleNamespace(slug="cp", wiring="L123", priority=0, min_session_current_a=None, max_current_a=None)
    expected = {
        "keba-p30": True,
        "abb-terra-ac": True,
        "webasto-next": False,
        "vestel-evc04": False,
        "schneider-evlink-pro-ac": False,
    }
    for slug, can_pause in expected.items():
        config = charger_config(charge_point, read_spec_file(SHIPPED_DIR / f"{slug}.json"), 30)
        assert (config.can_pause_on_failsafe, config.failsafe_min_a) == (can_pause, 6.0), slug
