"""A simulated site: the building's own load per phase, the chargers on it, and a script for tests and the demo.

What the site meter measures is the building load plus every charger's current on that phase, by
the charger's wiring (choices.Wiring: "L123" three-phase, "L1"/"L2"/"L3" single-phase on that site
phase; a charger's own L1 is its first). The building load follows a daily shape (low at night,
high in the afternoon), plus noise, plus scripted steps; with night_load_a == day_load_a and
noise_a=0 it is flat, which tests use. Time is simulated seconds advanced by `tick` (times speedup),
like ChargePointBehaviour's; a compressed day (day_length_s) lets the demo's load swing in minutes.
"""

import logging
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.choices import Wiring

if TYPE_CHECKING:
    from gateway.simulator.server import SimulatedChargePoint

logger = logging.getLogger(__name__)

NOMINAL_VOLTAGE_V = 230.0
SUPPLY_IMPEDANCE_OHM = 0.02  # a loaded phase sags a little at the meter
PHASES = 3
DAY_S = 86_400.0
# Afternoon peak, early-morning trough.
PEAK_HOUR = 15.0

# A scripted car starts charging this soon after it plugs in (a random one takes 5..45 s).
SCRIPTED_PREPARE_S = 0.5

PhaseValues = tuple[float, float, float]


def per_phase(value: float | Sequence[float]) -> PhaseValues:
    """One value for every phase, or one per phase."""
    if isinstance(value, int | float):
        return (float(value),) * PHASES  # type: ignore[return-value]
    values = tuple(float(v) for v in value)
    if len(values) != PHASES:
        raise ValueError(f"need {PHASES} values, one per phase, not {len(values)}")
    return values  # type: ignore[return-value]


def site_phases(wiring: str) -> tuple[int, ...]:
    """The site phases (0-based) a charger's L1, L2, L3 are connected to."""
    wiring = Wiring(wiring).value
    if wiring == Wiring.THREE_PHASE:
        return (0, 1, 2)
    return (int(wiring[1]) - 1,)


@dataclass
class SiteCharger:
    """A charger on the site and how it is wired."""

    charge_point: "SimulatedChargePoint"
    wiring: str = Wiring.THREE_PHASE.value

    def site_currents_a(self) -> list[float]:
        """Its currents on the site's phases."""
        currents = [0.0] * PHASES
        own = self.charge_point.behaviour.currents_a
        for index, phase in enumerate(site_phases(self.wiring)):
            currents[phase] += own[index]
        return currents


@dataclass(order=True)
class SiteEvent:
    """Something the script does at a simulated time."""

    at_s: float
    kind: str = field(compare=False)  # "load", "arrive", "leave"
    charger: int | str | None = field(default=None, compare=False)  # index or name
    delta_a: PhaseValues | None = field(default=None, compare=False)
    level_a: PhaseValues | None = field(default=None, compare=False)
    phases: int = field(default=3, compare=False)
    max_current_a: float = field(default=32.0, compare=False)


@dataclass
class SiteScript:
    """A timed script: load steps, cars arriving (with their phases and maximum) and leaving."""

    events: list[SiteEvent] = field(default_factory=list)

    def load_step(
        self,
        at_s: float,
        *,
        delta_a: float | Sequence[float] | None = None,
        level_a: float | Sequence[float] | None = None,
    ) -> "SiteScript":
        """At at_s the building load rises by delta_a, or is level_a from then on (A, per phase or all)."""
        if (delta_a is None) == (level_a is None):
            raise ValueError("a load step needs delta_a or level_a")
        self.events.append(
            SiteEvent(
                at_s,
                "load",
                delta_a=None if delta_a is None else per_phase(delta_a),
                level_a=None if level_a is None else per_phase(level_a),
            )
        )
        return self

    def arrive(self, at_s: float, charger: int | str, *, phases: int = 3, max_current_a: float = 32.0) -> "SiteScript":
        """A car plugs into the charger (index or name) and stays until `leave`."""
        self.events.append(SiteEvent(at_s, "arrive", charger, phases=phases, max_current_a=max_current_a))
        return self

    def leave(self, at_s: float, charger: int | str) -> "SiteScript":
        self.events.append(SiteEvent(at_s, "leave", charger))
        return self


class SiteModel:
    """The building load and the chargers of one site; thread-safe (the fleet ticks, tests step)."""

    def __init__(
        self,
        *,
        night_load_a: float = 8.0,
        day_load_a: float = 24.0,
        phase_weights: Sequence[float] = (1.0, 0.85, 0.7),
        noise_a: float = 0.4,
        start_hour: float = 12.0,
        day_length_s: float = DAY_S,
        speedup: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if day_length_s <= 0 or speedup <= 0:
            raise ValueError("day_length_s and speedup must be positive")
        self.night_load_a = night_load_a
        self.day_load_a = day_load_a
        self.phase_weights = per_phase(phase_weights)
        self.noise_a = noise_a
        self.start_hour = start_hour
        self.day_length_s = day_length_s
        self.speedup = speedup
        self.rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self.chargers: list[SiteCharger] = []
        self.now_s = 0.0
        self.energy_import_wh = self.rng.uniform(1e6, 5e7)
        self._offset_a: list[float] = [0.0] * PHASES
        self._level_a: PhaseValues | None = None
        self._noise: list[float] = [0.0] * PHASES
        self._voltage_bias_v = [self.rng.uniform(-2.0, 2.0) for _ in range(PHASES)]
        self._pending: list[SiteEvent] = []
        self._lock = threading.RLock()

    @classmethod
    def flat(cls, load_a: float | Sequence[float], **options: object) -> "SiteModel":
        """A site whose building draws a steady load_a (A, per phase or all) without noise: for tests."""
        model = cls(night_load_a=0.0, day_load_a=0.0, noise_a=0.0, **options)  # type: ignore[arg-type]
        model._level_a = per_phase(load_a)
        return model

    # --- the chargers ---------------------------------------------------------------------
    def add_charger(self, charge_point: "SimulatedChargePoint", wiring: str = Wiring.THREE_PHASE.value) -> SiteCharger:
        """Put a charger on the site; a single-phase wiring only ever carries single-phase cars."""
        entry = SiteCharger(charge_point, Wiring(wiring).value)
        if entry.wiring != Wiring.THREE_PHASE:
            charge_point.behaviour.supply_phases = 1
        with self._lock:
            self.chargers.append(entry)
        return entry

    def charger(self, key: int | str) -> "SimulatedChargePoint":
        """A charger by index or name."""
        if isinstance(key, int):
            return self.chargers[key].charge_point
        for entry in self.chargers:
            if entry.charge_point.name == key:
                return entry.charge_point
        raise KeyError(f"no charger {key!r} on the site")

    # --- what the meter measures ----------------------------------------------------------------
    def building_load_a(self) -> PhaseValues:
        """The non-EV load per phase now (A, never negative)."""
        with self._lock:
            if self._level_a is not None:
                base = list(self._level_a)
            else:
                shape = self._daily_shape()
                level = self.night_load_a + (self.day_load_a - self.night_load_a) * shape
                base = [level * weight for weight in self.phase_weights]
            return tuple(  # type: ignore[return-value]
                max(0.0, b + o + n) for b, o, n in zip(base, self._offset_a, self._noise, strict=True)
            )

    def charger_currents_a(self) -> PhaseValues:
        """Σ of the chargers' currents on each site phase."""
        totals = [0.0] * PHASES
        for entry in list(self.chargers):
            for phase, current in enumerate(entry.site_currents_a()):
                totals[phase] += current
        return tuple(totals)  # type: ignore[return-value]

    def phase_currents_a(self) -> PhaseValues:
        """What the site meter reads per phase: building + chargers."""
        building, chargers = self.building_load_a(), self.charger_currents_a()
        return tuple(round(b + c, 3) for b, c in zip(building, chargers, strict=True))  # type: ignore[return-value]

    def voltages_v(self, currents_a: Sequence[float] | None = None) -> PhaseValues:
        currents_a = self.phase_currents_a() if currents_a is None else currents_a
        return tuple(  # type: ignore[return-value]
            round(NOMINAL_VOLTAGE_V + bias - SUPPLY_IMPEDANCE_OHM * current, 2)
            for bias, current in zip(self._voltage_bias_v, currents_a, strict=True)
        )

    # --- scripting ------------------------------------------------------------------------------
    def step(
        self,
        *,
        delta_a: float | Sequence[float] | None = None,
        level_a: float | Sequence[float] | None = None,
        at_s: float | None = None,
    ) -> None:
        """A building load step now (or at simulated time at_s): up by delta_a, or to level_a from then on."""
        event = SiteScript().load_step(self.now_s if at_s is None else at_s, delta_a=delta_a, level_a=level_a).events[0]
        if at_s is None:
            self._apply(event)
        else:
            self.run(SiteScript([event]))

    def clear_steps(self) -> None:
        """Back to the daily shape (or the flat level a `flat` site started with is gone too)."""
        with self._lock:
            self._offset_a = [0.0] * PHASES
            self._level_a = None

    def run(self, script: SiteScript) -> None:
        """Schedule a script's events (times are simulated seconds on this site's clock)."""
        with self._lock:
            self._pending = sorted([*self._pending, *script.events])
        self._run_due()

    # --- time -----------------------------------------------------------------------------------
    def tick(self, dt_s: float) -> None:
        """Advance by dt_s real seconds (times speedup): due events, fresh noise, the energy counter."""
        step_s = max(0.0, dt_s) * self.speedup
        with self._lock:
            self.now_s += step_s
            if self.noise_a > 0:
                self._noise = [self.rng.gauss(0.0, self.noise_a) for _ in range(PHASES)]
        self._run_due()
        currents = self.phase_currents_a()
        power_w = sum(v * i for v, i in zip(self.voltages_v(currents), currents, strict=True))
        with self._lock:
            self.energy_import_wh += power_w * step_s / 3600.0

    def _run_due(self) -> None:
        while True:
            with self._lock:
                if not self._pending or self._pending[0].at_s > self.now_s:
                    return
                event = self._pending.pop(0)
            self._apply(event)

    def _apply(self, event: SiteEvent) -> None:
        if event.kind == "load":
            with self._lock:
                if event.level_a is not None:
                    self._level_a = event.level_a
                    self._offset_a = [0.0] * PHASES
                elif event.delta_a is not None:
                    self._offset_a = [o + d for o, d in zip(self._offset_a, event.delta_a, strict=True)]
            logger.info("site: building load now %s A", ", ".join(f"{a:.1f}" for a in self.building_load_a()))
        elif event.kind == "arrive" and event.charger is not None:
            self.charger(event.charger).connect_vehicle(
                event.phases,
                max_current_a=event.max_current_a,
                energy_needed_wh=math.inf,
                stay_s=math.inf,
                prepare_s=SCRIPTED_PREPARE_S,
            )
        elif event.kind == "leave" and event.charger is not None:
            self.charger(event.charger).unplug_vehicle()

    def _daily_shape(self) -> float:
        """0 at the early-morning trough, 1 at the afternoon peak."""
        hour = (self.start_hour + 24.0 * self.now_s / self.day_length_s) % 24.0
        return 0.5 + 0.5 * math.cos(2 * math.pi * (hour - PEAK_HOUR) / 24.0)
