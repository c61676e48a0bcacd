"""A believable AC charge point as a pure state machine over simulated time (no I/O).

Sessions follow IEC 61851-1: idle (A) → vehicle connected (B, preparing) → charging (C) →
finished, vehicle still connected (B) → unplugged (A). Faults (F) come and go. Every random
choice comes from the `random.Random` passed in, so a seed replays the same day.
"""

import enum
import math
import random
from dataclasses import dataclass

from gateway.choices import OperatorStatus, Role

NOMINAL_VOLTAGE_V = 230.0
# IEC 61851-1: the pilot cannot signal less than 6 A, so a lower limit pauses charging.
MIN_CHARGE_CURRENT_A = 6.0
# Long ticks (high speedup) are split so that transitions and the energy integral stay smooth.
MAX_STEP_S = 5.0
# How long a car takes to follow a new pilot limit: IEC 61851-1 allows the EV up to 5 s; cars
# typically take one to two. The limit reads back at once; the current follows after this.
# `simulate` and the demo use it; the model's own default is 0 (at once), which unit tests of
# the register image rely on.
RESPONSE_DELAY_S = 1.5
ERROR_CODES: dict[int, str] = {
    16: "residual current detected",
    32: "over-temperature",
    48: "contactor fault",
    64: "energy meter not responding",
}


class Phase(enum.Enum):
    """Where the charge point is in a session."""

    IDLE = "idle"
    PREPARING = "preparing"
    CHARGING = "charging"
    SUSPENDED = "suspended"
    FINISHING = "finishing"
    FAULTED = "faulted"


# Phase → (operator status, IEC 61851 pilot state).
PHASE_STATUS: dict[Phase, tuple[str, str]] = {
    Phase.IDLE: (OperatorStatus.AVAILABLE.value, "A"),
    Phase.PREPARING: (OperatorStatus.PREPARING.value, "B"),
    Phase.CHARGING: (OperatorStatus.CHARGING.value, "C"),
    Phase.SUSPENDED: (OperatorStatus.SUSPENDED.value, "B"),
    Phase.FINISHING: (OperatorStatus.FINISHING.value, "B"),
    Phase.FAULTED: (OperatorStatus.FAULTED.value, "F"),
}


@dataclass(frozen=True)
class BehaviourEvent:
    """Something an operator would notice: a session starts or ends, a fault comes or goes."""

    kind: str
    at_s: float
    detail: str = ""


@dataclass
class Vehicle:
    """The car plugged in for one session."""

    phases: int
    max_current_a: float
    energy_needed_wh: float
    departs_at_s: float
    imbalance_a: tuple[float, float, float]


class ChargePointBehaviour:
    """One charge point's electrical and session state, advanced by `tick`."""

    def __init__(
        self,
        rng: random.Random,
        *,
        speedup: float = 1.0,
        rated_current_a: float = 32.0,
        mean_idle_s: float = 1200.0,
        mean_fault_interval_s: float = 6 * 3600.0,
        start_busy: bool | None = None,
        session_scale: float = 1.0,
        response_delay_s: float = 0.0,
        arrivals: bool = True,
    ) -> None:
        if not 0 < session_scale <= 1:
            raise ValueError("session_scale must be in (0, 1]")
        if response_delay_s < 0:
            raise ValueError("response_delay_s must not be negative")
        # Simulated seconds between a new limit and the car drawing by it (0: at once).
        self.response_delay_s = response_delay_s
        # False: cars come only when told (connect_vehicle), as a scripted site wants.
        self.arrivals = arrivals
        # A charger wired single-phase (gateway.simulator.site) gives any car one phase only.
        self.supply_phases = 3
        self.rng = rng
        self.speedup = speedup
        # Compresses the day, not the physics: idle gaps, the energy a car needs, its stay and the
        # time between faults shrink by this factor while currents and power stay real (the demo
        # uses 0.01, so sessions start and finish and faults come and go within minutes).
        self.session_scale = session_scale
        mean_idle_s *= session_scale
        mean_fault_interval_s *= session_scale
        self.rated_current_a = rated_current_a
        self.mean_idle_s = mean_idle_s
        self.mean_fault_interval_s = mean_fault_interval_s
        self.now_s = 0.0
        self.phase = Phase.IDLE
        self.vehicle: Vehicle | None = None
        self.max_current_a = rated_current_a
        # The limit the car draws by, and the newer limit it will follow at the given time.
        self.followed_limit_a = rated_current_a
        self._pending_limit: tuple[float, float] | None = None
        self.error_code = 0
        self.sessions_started = 0
        self.energy_total_wh = rng.uniform(50_000, 5_000_000)
        self.session_energy_wh = 0.0
        self.currents_a = [0.0, 0.0, 0.0]
        self._voltage_bias_v = [rng.uniform(-3.0, 3.0) for _ in range(3)]
        self._voltage_drift_v = [0.0, 0.0, 0.0]
        self.voltages_v = [round(NOMINAL_VOLTAGE_V + b, 1) for b in self._voltage_bias_v]
        self.power_w = 0.0
        self._ambient_c = rng.uniform(14.0, 26.0)
        self._temperature_c = self._ambient_c
        self._phase_until_s = 0.0
        self._next_arrival_s = self._idle_duration_s()
        self._resume_phase = Phase.IDLE
        # Start some charge points mid-session, so a fresh fleet does not look empty.
        if start_busy if start_busy is not None else rng.random() < 0.4:
            self.connect_vehicle()
            needed_wh = self.vehicle.energy_needed_wh if self.vehicle else 0.0
            self.session_energy_wh = needed_wh * rng.uniform(0.0, 0.7)
            self.phase = Phase.CHARGING
        self._update_electrics(0.0)
        # A charger found mid-session is already warm.
        self._temperature_c = self._ambient_c + 1.1 * self.power_w / 1000.0

    # --- what a meter shows -------------------------------------------------------------
    @property
    def status(self) -> str:
        """The operator status (an OperatorStatus value)."""
        return PHASE_STATUS[self.phase][0]

    @property
    def iec61851_state(self) -> str:
        return PHASE_STATUS[self.phase][1]

    @property
    def temperature_c(self) -> float:
        return round(self._temperature_c, 1)

    def values(self) -> dict[str, float | int]:
        """The present engineering values, keyed by telemetry role."""
        return {
            Role.POWER_W.value: self.power_w,
            Role.CURRENT_L1_A.value: self.currents_a[0],
            Role.CURRENT_L2_A.value: self.currents_a[1],
            Role.CURRENT_L3_A.value: self.currents_a[2],
            Role.VOLTAGE_L1_V.value: self.voltages_v[0],
            Role.VOLTAGE_L2_V.value: self.voltages_v[1],
            Role.VOLTAGE_L3_V.value: self.voltages_v[2],
            Role.ENERGY_TOTAL_WH.value: round(self.energy_total_wh, 1),
            Role.SESSION_ENERGY_WH.value: round(self.session_energy_wh, 1),
            Role.TEMPERATURE_C.value: self.temperature_c,
            Role.CURRENT_LIMIT_A.value: self.max_current_a,
            Role.ERROR_CODE.value: self.error_code,
        }

    # --- what an operator or a driver does ----------------------------------------------
    def set_max_current(self, current_a: float) -> BehaviourEvent | None:
        """Take a current limit setpoint at once (it reads back at once; below 6 A charging pauses
        until it is raised); the car's current follows after response_delay_s."""
        self.max_current_a = max(0.0, min(float(current_a), self.rated_current_a))
        if self.response_delay_s > 0:
            self._pending_limit = (self.now_s + self.response_delay_s, self.max_current_a)
        else:
            self.followed_limit_a, self._pending_limit = self.max_current_a, None
        event = self._apply_limit()
        # Without advancing time: a client reading right after the write sees the new limit.
        self._update_electrics(0.0)
        return event

    def connect_vehicle(
        self,
        phases: int | None = None,
        *,
        max_current_a: float | None = None,
        energy_needed_wh: float | None = None,
        stay_s: float | None = None,
        prepare_s: float | None = None,
    ) -> BehaviourEvent | None:
        """A vehicle arrives now (if the charge point is free); charging follows shortly.

        What is not given is drawn at random; a scripted site passes stay_s=math.inf and
        energy_needed_wh=math.inf for a car that stays until `unplug_vehicle`.
        """
        if self.phase != Phase.IDLE:
            return None
        rng = self.rng
        if phases is None:
            phases = 1 if rng.random() < 0.2 else 3
        phases = min(phases, self.supply_phases)
        # Cars draw a little below the pilot limit, each phase slightly differently.
        imbalance = (rng.uniform(-0.8, -0.1), rng.uniform(-0.8, -0.1), rng.uniform(-0.8, -0.1))
        if max_current_a is None:
            max_current_a = float(rng.choice((16, 16, 20, 32, 32)))
        if energy_needed_wh is None:
            energy_needed_wh = rng.uniform(4_000, 45_000) * self.session_scale
        if stay_s is None:
            stay_s = rng.uniform(1800, 6 * 3600) * self.session_scale
        self.vehicle = Vehicle(
            phases=phases,
            max_current_a=float(max_current_a),
            energy_needed_wh=energy_needed_wh,
            departs_at_s=self.now_s + stay_s,
            imbalance_a=imbalance,
        )
        self.session_energy_wh = 0.0
        self.sessions_started += 1
        self.phase = Phase.PREPARING
        self._phase_until_s = self.now_s + (rng.uniform(5, 45) if prepare_s is None else prepare_s)
        return BehaviourEvent("session_started", self.now_s, f"{phases}-phase vehicle")

    def unplug_vehicle(self) -> BehaviourEvent | None:
        """The driver unplugs now (a scripted departure), whatever the session's state."""
        if self.vehicle is None or self.phase == Phase.FAULTED:
            return None
        return self._unplug()

    # --- time ---------------------------------------------------------------------------
    def tick(self, dt_s: float) -> list[BehaviourEvent]:
        """Advance by dt_s real seconds (times speedup) and return what happened."""
        remaining = max(0.0, dt_s) * self.speedup
        events: list[BehaviourEvent] = []
        while remaining > 0:
            step = min(remaining, MAX_STEP_S)
            pending = self._pending_limit
            if pending is not None and self.now_s < pending[0] < self.now_s + step:
                step = pending[0] - self.now_s  # the car reacts on time, not at the end of a long tick
            remaining -= step
            self.now_s += step
            if pending is not None and self.now_s >= pending[0]:
                self.followed_limit_a, self._pending_limit = pending[1], None
            event = self._transition(step)
            if event is not None:
                events.append(event)
            self._update_electrics(step)
        return events

    def _transition(self, dt_s: float) -> BehaviourEvent | None:
        """At most one state change per step."""
        now, vehicle = self.now_s, self.vehicle
        if self.phase != Phase.FAULTED and self.rng.random() < dt_s / self.mean_fault_interval_s:
            return self._fault()
        if self.phase == Phase.IDLE:
            return self.connect_vehicle() if now >= self._next_arrival_s else None
        if self.phase == Phase.FAULTED:
            return self._clear_fault() if now >= self._phase_until_s else None
        if vehicle is None:  # every other phase has a vehicle connected
            return None
        if self.phase == Phase.FINISHING:
            return self._unplug() if now >= vehicle.departs_at_s else None
        if self.phase in (Phase.CHARGING, Phase.SUSPENDED):
            if self.session_energy_wh >= vehicle.energy_needed_wh:
                return self._finish("vehicle full")
            if now >= vehicle.departs_at_s:
                return self._finish("stopped by driver")
        if self.phase == Phase.PREPARING and now >= self._phase_until_s:
            paused = self.max_current_a < MIN_CHARGE_CURRENT_A
            self.phase = Phase.SUSPENDED if paused else Phase.CHARGING
            return BehaviourEvent("charging_started", now, f"limit {self.max_current_a:g} A")
        return self._apply_limit()

    def _apply_limit(self) -> BehaviourEvent | None:
        """Pause or resume charging when the limit crosses the IEC 61851 minimum."""
        paused = self.max_current_a < MIN_CHARGE_CURRENT_A
        detail = f"limit {self.max_current_a:g} A"
        if self.phase == Phase.CHARGING and paused:
            self.phase = Phase.SUSPENDED
            return BehaviourEvent("charging_suspended", self.now_s, detail)
        if self.phase == Phase.SUSPENDED and not paused:
            self.phase = Phase.CHARGING
            return BehaviourEvent("charging_resumed", self.now_s, detail)
        return None

    def _finish(self, reason: str) -> BehaviourEvent:
        self.phase = Phase.FINISHING
        if self.vehicle is not None:
            # A driver who stops the session unplugs within minutes; a full car waits for them.
            stay_s = self.rng.uniform(30, 180) * max(self.session_scale, 0.1)
            self.vehicle.departs_at_s = max(self.vehicle.departs_at_s, self.now_s + stay_s)
        detail = f"{reason}, {self.session_energy_wh / 1000:.2f} kWh"
        return BehaviourEvent("session_finished", self.now_s, detail)

    def _unplug(self) -> BehaviourEvent:
        self.phase = Phase.IDLE
        self.vehicle = None
        self._next_arrival_s = self.now_s + self._idle_duration_s()
        return BehaviourEvent("vehicle_unplugged", self.now_s)

    def _fault(self) -> BehaviourEvent:
        self._resume_phase = self.phase
        self.phase = Phase.FAULTED
        self.error_code = self.rng.choice(list(ERROR_CODES))
        self._phase_until_s = self.now_s + self.rng.uniform(30, 300)
        return BehaviourEvent("fault", self.now_s, f"error {self.error_code}: {ERROR_CODES[self.error_code]}")

    def _clear_fault(self) -> BehaviourEvent:
        self.error_code = 0
        vehicle = self.vehicle
        if vehicle is None:
            self.phase = Phase.IDLE
            self._next_arrival_s = max(self._next_arrival_s, self.now_s)
        elif self.now_s >= vehicle.departs_at_s:
            # The driver left while the charger was faulted.
            self._unplug()
        elif self._resume_phase == Phase.FINISHING:
            self.phase = Phase.FINISHING
        else:
            self.phase = Phase.PREPARING
            self._phase_until_s = self.now_s + self.rng.uniform(5, 20)
        return BehaviourEvent("fault_cleared", self.now_s, f"now {self.status}")

    def _idle_duration_s(self) -> float:
        if not self.arrivals:
            return math.inf
        scale = self.session_scale
        return min(max(self.rng.expovariate(1.0 / self.mean_idle_s), 60.0 * scale), 4 * 3600.0 * scale)

    # --- electrics ----------------------------------------------------------------------
    def _update_electrics(self, dt_s: float) -> None:
        """Currents, voltages, power, energy and temperature for the present phase."""
        rng = self.rng
        currents = [0.0, 0.0, 0.0]
        vehicle = self.vehicle
        # A car that has not reacted yet keeps drawing by the limit it follows, even once paused;
        # one that has not reacted to a resume yet still draws nothing.
        limit = min(self.followed_limit_a, self.rated_current_a)
        drawing = self.phase == Phase.CHARGING or (self.phase == Phase.SUSPENDED and self._pending_limit is not None)
        if drawing and vehicle is not None and limit >= MIN_CHARGE_CURRENT_A:
            # Floor to the 0.01 A resolution, so rounding never lands above the limit.
            cap = math.floor(limit * 100) / 100
            target = min(vehicle.max_current_a, limit) * self._taper(vehicle)
            for i in range(vehicle.phases):
                current = target + vehicle.imbalance_a[i] + rng.gauss(0.0, 0.12)
                currents[i] = min(max(round(current, 2), 0.0), cap)
        self.currents_a = currents
        step_scale = math.sqrt(dt_s) if dt_s > 0 else 0.0
        voltages = []
        for i in range(3):
            drift = self._voltage_drift_v[i] + rng.gauss(0.0, 0.05) * step_scale
            self._voltage_drift_v[i] = min(max(drift, -4.0), 4.0)
            voltage = (
                NOMINAL_VOLTAGE_V
                + self._voltage_bias_v[i]
                + self._voltage_drift_v[i]
                - 0.04 * currents[i]  # supply impedance: a loaded phase sags a little
                + rng.gauss(0.0, 0.25)
            )
            voltages.append(round(voltage, 1))
        self.voltages_v = voltages
        self.power_w = round(sum(v * i for v, i in zip(voltages, currents, strict=True)), 1)
        energy_wh = self.power_w * dt_s / 3600.0
        self.energy_total_wh += energy_wh
        if vehicle is not None:
            self.session_energy_wh += energy_wh
        self._ambient_c = min(max(self._ambient_c + rng.gauss(0.0, 0.01) * step_scale, 5.0), 35.0)
        target_c = self._ambient_c + 1.1 * self.power_w / 1000.0
        if dt_s > 0:
            self._temperature_c += (target_c - self._temperature_c) * (1 - math.exp(-dt_s / 900))

    def _taper(self, vehicle: Vehicle) -> float:
        """Cars draw full current until the battery is nearly full, then less and less."""
        done = self.session_energy_wh / vehicle.energy_needed_wh
        if done <= 0.85:
            return 1.0
        return max(0.25, 1.0 - (done - 0.85) / 0.15 * 0.75)
