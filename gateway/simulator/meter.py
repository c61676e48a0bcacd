"""A simulated site meter (e.g. the Eastron SDM630 profile) served over Modbus TCP, reading a SiteModel.

The meter shows what a real one at the site's connection would: per phase, the building load plus
every charger's current on that phase (gateway.simulator.site), the voltages, the power per phase
and in total, and the import energy counter. It serves any meter profile through the same register
image and pymodbus server as the simulated chargers (SimulatedChargePoint), so the poller's own
decoder is what a test checks against. Values by role (current_l1_a.., voltage_l1_v.., power_w,
energy_total_wh); registers without a role by name: "...power...l1" the phase's power in W,
"...frequency..." 50 Hz.

A meter can be made stale for tests: `set_stale(True)` leaves requests unanswered (a dead meter
behind a Modbus gateway: the client times out), `stop()` closes it (connection refused).
"""

import asyncio
import logging
import re

from pymodbus.constants import ExcCodes

from gateway.choices import Iec61851State, OperatorStatus, Role
from gateway.profiles.codec import Value
from gateway.profiles.spec import ProfileSpec
from gateway.simulator.behaviour import Phase
from gateway.simulator.server import SimulatedChargePoint
from gateway.simulator.site import SiteModel

logger = logging.getLogger(__name__)

GRID_FREQUENCY_HZ = 50.0
_PHASE_POWER = re.compile(r"power.*l([123])|l([123]).*power", re.IGNORECASE)


class MeterReadings:
    """The site's measurements by telemetry role: what SimulatedChargePoint asks of a 'behaviour'.

    A meter has no session: it reports available / state A, no limit, and ignores ticks.
    """

    phase = Phase.IDLE
    status = OperatorStatus.AVAILABLE.value
    iec61851_state = Iec61851State.A.value
    max_current_a = 0.0

    def __init__(self, site: SiteModel) -> None:
        self.site = site
        self.currents_a = [0.0, 0.0, 0.0]  # the meter draws nothing itself

    def values(self) -> dict[str, float | int]:
        currents = self.site.phase_currents_a()
        voltages = self.site.voltages_v(currents)
        return {
            Role.CURRENT_L1_A.value: currents[0],
            Role.CURRENT_L2_A.value: currents[1],
            Role.CURRENT_L3_A.value: currents[2],
            Role.VOLTAGE_L1_V.value: voltages[0],
            Role.VOLTAGE_L2_V.value: voltages[1],
            Role.VOLTAGE_L3_V.value: voltages[2],
            Role.POWER_W.value: round(sum(v * i for v, i in zip(voltages, currents, strict=True)), 1),
            Role.ENERGY_TOTAL_WH.value: round(self.site.energy_import_wh, 1),
        }

    def tick(self, dt_s: float) -> list:
        return []


class SimulatedMeter(SimulatedChargePoint):
    """A site meter of `profile` on host:port, reading `site` at every request."""

    def __init__(
        self,
        site: SiteModel,
        profile: ProfileSpec,
        *,
        name: str = "sim-meter",
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int | None = None,
    ) -> None:
        readings = MeterReadings(site)
        super().__init__(name, profile, readings, host=host, port=port, unit_id=unit_id)  # type: ignore[arg-type]
        self.site = site
        self._stale = False
        self._answering: asyncio.Event | None = None  # set while not stale; made on the serving loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._phase_power = {
            register.name: int(next(group for group in match.groups() if group)) - 1
            for register in profile.registers
            if not register.role and (match := _PHASE_POWER.search(register.name))
        }
        self._frequency = {register.name for register in profile.registers if "frequency" in register.name.lower()}

    # --- stale, for tests ---------------------------------------------------------------------
    def set_stale(self, stale: bool) -> None:
        """True: requests go unanswered (the client times out) until set back to False. Thread-safe."""
        self._stale = stale
        loop, answering = self._loop, self._answering
        if loop is not None and answering is not None and not loop.is_closed():
            flip = answering.clear if stale else answering.set
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                flip()
            else:
                loop.call_soon_threadsafe(flip)
        logger.info("%s: %s", self.name, "stale (not answering)" if stale else "answering again")

    @property
    def stale(self) -> bool:
        return self._stale

    # --- serving --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._answering = asyncio.Event()
        if not self._stale:
            self._answering.set()
        await super().start()

    def served_words(self, unit_id: int, function: str) -> dict[int, int | bool]:
        """Fresh at every read: the site changes between ticks (steps, chargers' writes)."""
        with self._lock:
            self._version += 1
        return super().served_words(unit_id, function)

    def _register_values(self) -> dict[str, Value]:
        values = super()._register_values()
        by_role = self.behaviour.values()
        currents = [float(by_role[role]) for role in (Role.CURRENT_L1_A, Role.CURRENT_L2_A, Role.CURRENT_L3_A)]
        voltages = [float(by_role[role]) for role in (Role.VOLTAGE_L1_V, Role.VOLTAGE_L2_V, Role.VOLTAGE_L3_V)]
        for name, phase in self._phase_power.items():
            values[name] = round(currents[phase] * voltages[phase], 1)
        for name in self._frequency:
            values[name] = GRID_FREQUENCY_HZ
        values.update(self._overrides)
        return values

    async def _action(
        self,
        unit_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self._answering is not None and not self._answering.is_set():
            await self._answering.wait()  # no answer meanwhile: the client's timeout decides
        return await super()._action(
            unit_id, function_code, start_address, address, count, current_registers, set_values
        )
