"""What each car actually takes, so a car that draws less than its share does not hold room others
could use (pure: fed each round by the controller, no I/O).

A car's own charger (an 11 kW car on a 22 kW charger, a 1-phase 16 A car), a battery tapering
near full, or a car that has finished and sits at 0 A draws less than the limit it was given.
Without an estimate of its demand, max-min fair sharing gives it the same share as the others and
that room is left unused while other cars are slowed down.

The rule, per charging car with a verified limit:
- Limited: its draw (the most loaded of its phases) stayed at least DEMAND_HEADROOM_A below the
  limit it holds for DEMAND_ROUNDS consecutive rounds, each at least DEMAND_SETTLE_S after its last
  limit change (IEC 61851-1 gives a car 5 s to follow a new limit; a record may be a poll old).
  Its demand is then its highest draw in those rounds, rounded up, plus DEMAND_HEADROOM_A.
- While limited, the estimate follows the draw down (a tapering battery), but only by steps of
  at least DEMAND_LOWER_STEP_A, so measurement noise does not rewrite the limit every round.
- Released: its draw rose to within DEMAND_RELEASE_A of the estimate (the car wants more, e.g.
  after cell balancing or a cold battery warming up): the estimate is dropped at once and the car
  is back to a full share in the next round (ramping like any increase).
- Forgotten when it stops charging, is paused, or its limit is unknown.

allocate() shares the room among the estimates first, then gives what is still left back to the
limited cars, so a limited car is never held below its full share when the room is there.
"""

import math
from collections import deque
from dataclasses import dataclass, field

DEMAND_HEADROOM_A = 3.0  # kept above a limited car's draw: it can rise this much before the release
DEMAND_ROUNDS = 3  # consecutive rounds (each on a new record) below its limit before a car counts as limited
DEMAND_SETTLE_S = 10.0  # after a limit change, rounds count only once the car had time to follow
DEMAND_RELEASE_A = 1.5  # a draw this close to the estimate releases it
DEMAND_LOWER_STEP_A = 2.0  # the estimate follows the draw down by at least this much at a time
_ROUNDING_A = 0.2  # a draw of 6.1 A is a 6 A car's measurement noise, not a 7 A demand


@dataclass
class _CarDemand:
    draws_a: deque[float] = field(default_factory=lambda: deque(maxlen=DEMAND_ROUNDS))
    estimate_a: float | None = None
    record_at: float | None = None  # the record last counted: an urgent round between polls counts none twice


class DemandTracker:
    """Per charger: the demand estimate (None: unknown, the car may take its full share)."""

    def __init__(self) -> None:
        self._cars: dict[str, _CarDemand] = {}

    def observe(
        self, slug: str, *, drawn_a: float, held_a: float | None, settled: bool, record_at: float
    ) -> float | None:
        """One round's view of a charging car: its draw on its most loaded phase, the limit it holds
        (verified; None or 0: unknown or paused), whether its last limit change is DEMAND_SETTLE_S
        older than its record, and when that record came. Returns its demand estimate."""
        if held_a is None or held_a <= 0:
            self.forget(slug)
            return None
        car = self._cars.setdefault(slug, _CarDemand())
        if record_at == car.record_at:
            return car.estimate_a  # no new record since the last round
        car.record_at = record_at
        if car.estimate_a is not None:
            if drawn_a >= car.estimate_a - DEMAND_RELEASE_A:
                self.forget(slug)  # it wants more: a full share next round
                return None
            if settled:
                car.draws_a.append(drawn_a)
                lower_a = _estimate_of(car.draws_a)
                if lower_a <= car.estimate_a - DEMAND_LOWER_STEP_A:
                    car.estimate_a = lower_a
            return car.estimate_a
        if not settled:
            return None  # neither counts nor breaks the run: the car is still following a change
        if drawn_a > held_a - DEMAND_HEADROOM_A:
            car.draws_a.clear()
            return None
        car.draws_a.append(drawn_a)
        if len(car.draws_a) >= DEMAND_ROUNDS:
            car.estimate_a = _estimate_of(car.draws_a)
        return car.estimate_a

    def forget(self, slug: str) -> None:
        self._cars.pop(slug, None)

    def estimate_a(self, slug: str) -> float | None:
        car = self._cars.get(slug)
        return None if car is None else car.estimate_a


def _estimate_of(draws_a: deque[float]) -> float:
    return float(math.ceil(max(0.0, max(draws_a)) - _ROUNDING_A)) + DEMAND_HEADROOM_A
