"""The site meter's reader: its own Modbus connection, read every METER_READ_INTERVAL_S through the
meter's profile; it keeps the last good per-phase currents and when they were read.

It never raises out of its loop: a meter that does not answer, answers with an exception or a
value that does not decode simply stops refreshing the reading, which then goes stale (the
controller's fallback). A stale meter is the failure that matters; why is logged once per outage.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.choices import Role
from gateway.conf import setting
from gateway.modbus.connection import ChargePointConnection, ConnectionFailed, ModbusError, PaceInterrupted
from gateway.modbus.pacing import effective_pacing
from gateway.modbus.poller import plan_profile
from gateway.runtime import wait_unless_stopped
from gateway.sitecontrol.config import MeterConfig

logger = logging.getLogger(__name__)

METER_READ_INTERVAL_S = 1.0
PHASE_ROLES = (Role.CURRENT_L1_A.value, Role.CURRENT_L2_A.value, Role.CURRENT_L3_A.value)
Phases = tuple[float, float, float]
Clock = Callable[[], float]
OnReading = Callable[[Phases], None]


class MeterReader:
    """Reads one site meter; `on_reading` is called with each good reading (the controller's urgent check)."""

    def __init__(
        self,
        config: MeterConfig,
        *,
        clock: Clock = time.monotonic,
        on_reading: OnReading | None = None,
        interval_s: float = METER_READ_INTERVAL_S,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_reading = on_reading
        self.interval_s = interval_s
        plan = plan_profile(config.profile)
        self.requests = plan.fast + plan.slow
        self.decoder = plan.decoder
        self.names: dict[str, str] = {reg.role: reg.name for reg in config.profile.registers if reg.role in PHASE_ROLES}
        missing = [role for role in PHASE_ROLES if role not in self.names]
        if missing:
            raise ValueError(f"meter profile {config.profile.slug} has no register for {', '.join(missing)}")
        self.connection = ChargePointConnection(
            config.host,
            config.port,
            config.unit_id,
            setting("MODBUS_TIMEOUT_S"),
            pacing=effective_pacing(config.profile, None, None),
        )
        self.current_a: Phases | None = None  # the last good reading
        self.read_at: float | None = None  # when (clock seconds)
        self.reads = 0
        self.failures = 0  # reads that gave no good reading since the last good one
        self.problem: str | None = None  # why the last read failed

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the last good reading (None: never read)."""
        if self.read_at is None:
            return None
        return (self.clock() if now is None else now) - self.read_at

    def stale(self, now: float | None = None) -> bool:
        age = self.age_s(now)
        return age is None or age > self.config.stale_s

    async def read_once(self) -> Phases | None:
        """One read of the meter; the per-phase currents, or None (why: `problem`)."""
        try:
            await self.connection.ensure_connected()
            decoded = {}
            for request in self.requests:
                words = await self.connection.read(request)
                values, _errors = self.decoder.decode_block(request, words)
                decoded.update(values)
        except (ModbusError, OSError) as exc:
            return self._failed(str(exc) or type(exc).__name__)
        phases = [decoded.get(self.names[role]) for role in PHASE_ROLES]
        if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in phases):
            return self._failed(f"the currents do not decode: {phases}")
        reading: Phases = (float(phases[0]), float(phases[1]), float(phases[2]))
        if self.failures:
            logger.info(
                "meter %s:%d answers again after %d failed reads", self.config.host, self.config.port, self.failures
            )
        self.current_a, self.read_at = reading, self.clock()
        self.reads += 1
        self.failures = 0
        self.problem = None
        if self.on_reading is not None:
            self.on_reading(reading)
        return reading

    def _failed(self, problem: str) -> None:
        self.failures += 1
        self.problem = problem
        if self.failures == 1:
            logger.warning("meter %s:%d: %s", self.config.host, self.config.port, problem)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Read every interval_s until stop is set; nothing escapes but cancellation."""
        self.connection.stop = stop
        next_at = self.clock()
        try:
            while not stop.is_set():
                try:
                    await self.read_once()
                except PaceInterrupted:
                    break
                except ConnectionFailed as exc:  # never expected here (read_once catches it), but never fatal
                    self._failed(str(exc))
                except Exception:
                    logger.exception("meter %s:%d: the read failed unexpectedly", self.config.host, self.config.port)
                    self.failures += 1
                next_at = max(next_at + self.interval_s, self.clock())
                await wait_unless_stopped(stop, next_at - self.clock())
        finally:
            await self.connection.close()
