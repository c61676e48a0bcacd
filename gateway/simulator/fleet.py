"""A fleet of simulated charge points on consecutive ports, ticked by one asyncio task."""

import asyncio
import contextlib
import logging
import math
import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from gateway.choices import Wiring
from gateway.profiles.spec import ProfileSpec
from gateway.simulator.behaviour import ChargePointBehaviour
from gateway.simulator.meter import SimulatedMeter
from gateway.simulator.registers import ProfileImage, identity_values
from gateway.simulator.server import SimulatedChargePoint
from gateway.simulator.site import SiteModel

logger = logging.getLogger(__name__)

MAX_PORT = 65535
VERBOSE_FLEET_SIZE = 100


class SimulatorFleet:
    """`count` simulated charge points from base_port upwards, serving one profile or cycling over several.

    Charge point i serves profiles[i % len(profiles)] with that profile's default unit id, unless
    `unit_id` overrides it for all. base_port=0 lets the OS pick a free port for each (tests);
    read them from `charge_points`. `lean` serves them with gateway.simulator.lean instead of pymodbus.
    `first_index` numbers this fleet's charge points from there (a worker process serving a slice
    of a larger fleet): names, profile cycling and each one's random seed are those the whole
    fleet would give them. `ignore_writes`: every charge point acknowledges writes and ignores them
    (SimulatedChargePoint.set_ignore_writes switches one).
    """

    def __init__(
        self,
        profile: ProfileSpec | Sequence[ProfileSpec],
        count: int,
        host: str = "127.0.0.1",
        base_port: int = 15020,
        speedup: float = 1.0,
        seed: int | None = None,
        unit_id: int | None = None,
        tick_s: float = 0.2,
        lean: bool = False,
        first_index: int = 0,
        ignore_writes: bool = False,
        session_scale: float = 1.0,
        response_delay_s: float = 0.0,
        scripted: bool = False,
    ) -> None:
        profiles = (profile,) if isinstance(profile, ProfileSpec) else tuple(profile)
        if not profiles:
            raise ValueError("a fleet needs at least one profile")
        if count < 1:
            raise ValueError("a fleet needs at least one charge point")
        if base_port and not 1 <= base_port <= MAX_PORT - count + 1:
            raise ValueError(f"ports {base_port}..{base_port + count - 1} are not all valid")
        if speedup <= 0 or tick_s <= 0:
            raise ValueError("speedup and tick_s must be positive")
        self.profiles = profiles
        self.host = host
        self.tick_s = tick_s
        self.ignore_writes = ignore_writes
        master = random.Random(seed)  # noqa: S311 - simulation, not security
        for _ in range(first_index):  # the draws of the charge points before this slice
            master.getrandbits(64)
        # One image per profile and unit id: the status code search runs once, not per charge point.
        images: dict[tuple[int, int], ProfileImage] = {}
        self.charge_points: list[SimulatedChargePoint] = []
        for index in range(first_index, first_index + count):
            spec = profiles[index % len(profiles)]
            unit = spec.default_unit_id if unit_id is None else unit_id
            image = images.get((id(spec), unit))
            if image is None:
                image = images[(id(spec), unit)] = ProfileImage(spec, unit)
            rng = random.Random(master.getrandbits(64))  # noqa: S311
            name = f"sim-cp-{index + 1:03d}"
            self.charge_points.append(
                SimulatedChargePoint(
                    name,
                    spec,
                    ChargePointBehaviour(
                        rng,
                        speedup=speedup,
                        session_scale=session_scale,
                        response_delay_s=response_delay_s,
                        **(
                            {"arrivals": False, "start_busy": False, "mean_fault_interval_s": math.inf}
                            if scripted
                            else {}
                        ),
                    ),
                    host=host,
                    port=base_port + index - first_index if base_port else 0,
                    unit_id=unit,
                    identity=identity_values(spec, rng, name),
                    image=image,
                    lean=lean,
                    ignore_writes=ignore_writes,
                )
            )
        self._ticker: asyncio.Task[None] | None = None
        self._thread_stop: asyncio.Event | None = None
        self.site: SiteModel | None = None
        self.meter: SimulatedMeter | None = None

    def attach_site(
        self,
        site: SiteModel,
        *,
        wiring: Sequence[str] | None = None,
        meter_profile: ProfileSpec | None = None,
        meter_port: int = 0,
        meter_unit_id: int | None = None,
    ) -> SiteModel:
        """Put every charge point on `site` (wiring[i], default three-phase) and, with a meter
        profile, serve the site meter on meter_port (0: any free port; see `meter.port`). Before start."""
        if self._ticker is not None:
            raise RuntimeError("attach the site before the fleet starts")
        wiring = list(wiring or [])
        for index, charge_point in enumerate(self.charge_points):
            site.add_charger(charge_point, wiring[index] if index < len(wiring) else Wiring.THREE_PHASE.value)
        self.site = site
        if meter_profile is not None:
            self.meter = SimulatedMeter(site, meter_profile, host=self.host, port=meter_port, unit_id=meter_unit_id)
        return site

    @classmethod
    def mixed(cls, profiles: Sequence[ProfileSpec], count: int, **options: Any) -> "SimulatorFleet":
        """A fleet cycling over several profiles (charge point i serves profiles[i % len(profiles)])."""
        return cls(list(profiles), count, **options)

    @property
    def profile(self) -> ProfileSpec:
        """The first profile (the only one of a single-profile fleet)."""
        return self.profiles[0]

    @property
    def started(self) -> bool:
        return self._ticker is not None

    async def start(self) -> None:
        """Start every server, then the tick task; on a failed bind, stop what started."""
        if self._ticker is not None:
            raise RuntimeError("fleet already started")
        try:
            # A line per charge point is useful for a dozen, noise for thousands (those go to DEBUG).
            level = logging.INFO if len(self.charge_points) <= VERBOSE_FLEET_SIZE else logging.DEBUG
            if self.meter is not None:
                await self.meter.start()
                logger.info(
                    "%s: site meter %s on %s:%s unit %s",
                    self.meter.name,
                    self.meter.profile.slug,
                    self.host,
                    self.meter.port,
                    self.meter.unit_id,
                )
            for charge_point in self.charge_points:
                await charge_point.start()
                others = [str(unit) for unit in charge_point.unit_ids if unit != charge_point.unit_id]
                logger.log(
                    level,
                    "%s: %s on %s:%s unit %s%s, %s",
                    charge_point.name,
                    charge_point.profile.slug,
                    self.host,
                    charge_point.port,
                    charge_point.unit_id,
                    f" (also unit {', '.join(others)})" if others else "",
                    charge_point.behaviour.status,
                )
        except BaseException:
            await self._stop_servers()
            raise
        if level != logging.INFO:
            first, last = self.charge_points[0], self.charge_points[-1]
            logger.info(
                "%s..%s: %s charge points on %s:%s..%s (%s)",
                first.name,
                last.name,
                len(self.charge_points),
                self.host,
                first.port,
                last.port,
                ", ".join(sorted({cp.profile.slug for cp in self.charge_points})),
            )
        if self.ignore_writes:
            logger.warning("every charge point acknowledges writes and ignores them (ignore writes)")
        self._ticker = asyncio.create_task(self._tick_forever(), name="simulator-ticks")

    async def stop(self) -> None:
        """Cancel the tick task and close every server and connection."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self._stop_servers()

    async def __aenter__(self) -> "SimulatorFleet":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _stop_servers(self) -> None:
        for charge_point in self.charge_points:
            await charge_point.stop()
        if self.meter is not None:
            await self.meter.stop()

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for charge_point in self.charge_points:
                try:
                    charge_point.tick(now - last)
                except Exception:
                    # One broken model must not freeze the others.
                    logger.exception("%s: tick failed", charge_point.name)
            if self.site is not None:
                try:
                    self.site.tick(now - last)
                except Exception:
                    logger.exception("site: tick failed")
            last = now

    # --- running outside the caller's event loop ----------------------------------------
    @contextlib.contextmanager
    def run_in_thread(self, timeout_s: float = 10.0) -> Iterator["SimulatorFleet"]:
        """Serve from a background thread with its own event loop; yields the started fleet."""
        ready = threading.Event()
        failure: list[BaseException] = []
        loop_box: list[asyncio.AbstractEventLoop] = []

        async def serve() -> None:
            self._thread_stop = asyncio.Event()
            loop_box.append(asyncio.get_running_loop())
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                ready.set()
            try:
                await self._thread_stop.wait()
            finally:
                await self.stop()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="simulator-fleet")
        thread.start()
        try:
            if not ready.wait(timeout_s):
                raise TimeoutError("simulator fleet did not start in time")
            if failure:
                raise failure[0]
            yield self
        finally:
            if loop_box and self._thread_stop is not None and not loop_box[0].is_closed():
                loop_box[0].call_soon_threadsafe(self._thread_stop.set)
            thread.join(timeout_s)
            self._thread_stop = None


async def serve_fleet(fleet: SimulatorFleet, stop: asyncio.Event, *, run_for_s: float | None = None) -> None:
    """Run a fleet until `stop` is set (or for run_for_s seconds), then stop it cleanly."""
    await fleet.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), run_for_s)
        logger.info("simulator stopping")
    finally:
        await fleet.stop()
