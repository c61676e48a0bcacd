"""DemandTracker: when a car counts as drawing less than its limit, what it is estimated to take,
and when it is released (gateway/sitecontrol/demand.py). The figures are worked out by hand from
the module's documented rule: 3 settled records at least 3 A below the limit, then the highest
draw rounded up plus 3 A; released by a draw within 1.5 A of the estimate."""

from gateway.sitecontrol.demand import DemandTracker


def feed(tracker: DemandTracker, draws: list[float], *, held_a: float = 16.0, start: int = 0) -> list[float | None]:
    return [
        tracker.observe("cp", drawn_a=drawn, held_a=held_a, settled=True, record_at=float(start + n))
        for n, drawn in enumerate(draws)
    ]


def test_three_records_well_below_the_limit_make_an_estimate_of_the_highest_draw_plus_3_a() -> None:
    tracker = DemandTracker()
    # 16 A held, the car takes ~6 A: 6.0, 6.3, 5.9 -> ceil(6.3 - 0.2) = 7, + 3 = 10 A.
    assert feed(tracker, [6.0, 6.3, 5.9]) == [None, None, 10.0]


def test_a_car_that_takes_its_limit_or_nearly_is_never_limited() -> None:
    tracker = DemandTracker()
    # 13.1 A of 16 A is within the 3 A headroom: not limited; a run below is broken by it.
    assert feed(tracker, [15.8, 13.1, 6.0, 6.0, 13.5, 6.0, 6.0]) == [None] * 7


def test_records_right_after_a_limit_change_do_not_count_and_the_same_record_counts_once() -> None:
    tracker = DemandTracker()
    assert tracker.observe("cp", drawn_a=6.0, held_a=16.0, settled=False, record_at=1.0) is None
    assert tracker.observe("cp", drawn_a=6.0, held_a=16.0, settled=True, record_at=2.0) is None
    assert tracker.observe("cp", drawn_a=6.0, held_a=16.0, settled=True, record_at=2.0) is None  # an urgent round
    assert tracker.observe("cp", drawn_a=6.0, held_a=16.0, settled=True, record_at=3.0) is None
    assert tracker.observe("cp", drawn_a=6.0, held_a=16.0, settled=True, record_at=4.0) == 9.0


def test_the_estimate_follows_a_tapering_battery_down_in_steps_of_2_a() -> None:
    tracker = DemandTracker()
    assert feed(tracker, [12.0, 12.0, 12.0], held_a=32.0)[-1] == 15.0
    # 11 A -> 14 A would be a 1 A step: kept at 15 until the last three records say 13 A or less.
    assert feed(tracker, [11.0, 11.0, 11.0, 10.0, 10.0, 10.0], held_a=32.0, start=10) == [15.0] * 5 + [13.0]


def test_a_draw_close_to_the_estimate_releases_it_at_once() -> None:
    tracker = DemandTracker()
    assert feed(tracker, [6.0, 6.0, 6.0]) == [None, None, 9.0]
    # 7.5 A is within 1.5 A of 9 A: the car wants more.
    assert tracker.observe("cp", drawn_a=7.5, held_a=9.0, settled=False, record_at=10.0) is None
    assert tracker.estimate_a("cp") is None


def test_a_paused_or_unknown_limit_forgets_the_car() -> None:
    tracker = DemandTracker()
    assert feed(tracker, [0.0, 0.0, 0.0])[-1] == 3.0  # a full battery: 0 A + 3 A (allocate keeps the minimum)
    assert tracker.observe("cp", drawn_a=0.0, held_a=0.0, settled=True, record_at=9.0) is None
    assert tracker.observe("cp", drawn_a=0.0, held_a=16.0, settled=True, record_at=10.0) is None  # starts over
