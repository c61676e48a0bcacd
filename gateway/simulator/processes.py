"""One simulated fleet served by several worker processes, each a contiguous slice of the ports.

One Python process serves reads on one core; a poller benchmark at thousands of charge points
needs more than one. The fleet is cut into N contiguous slices (worker k serves charge points
first..first+count-1 on ports base_port+first upwards); each slice is the same charge points,
names, profiles and random seeds that one process would serve (SimulatorFleet's first_index).

Why multiprocessing with the spawn start method, rather than subprocesses re-invoking manage.py:
- the parent has already loaded the profiles (an operator's edited database copy, else the shipped
  file) and hands the specs over as they are; the children never open the database;
- a slice's position in the fleet is passed as an argument, not as a CLI option operators would see;
- spawn, not fork: each child starts from a fresh interpreter, without a copy of the parent's
  threads, database connections or logging locks.

The parent forwards SIGINT/SIGTERM to the workers and returns once they have all exited; a worker
that exits with a non-zero code is logged at once, the others are stopped and the failure returned.
"""

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from gateway.profiles.spec import ProfileSpec
from gateway.runtime import PR_SET_PDEATHSIG, configure_verbosity, raise_open_file_limit, run_until_stopped

if TYPE_CHECKING:
    from gateway.simulator.fleet import SimulatorFleet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetPlan:
    """Everything a worker needs to build its slice of the fleet (picklable)."""

    profiles: tuple[ProfileSpec, ...]
    count: int
    base_port: int
    host: str = "127.0.0.1"
    speedup: float = 1.0
    seed: int | None = None
    unit_id: int | None = None
    lean: bool = False
    ignore_writes: bool = False
    session_scale: float = 1.0  # see ChargePointBehaviour: the demo compresses sessions
    response_delay_s: float = 0.0  # see ChargePointBehaviour: how long cars take to follow a limit
    tick_s: float | None = None  # None: the fleet's default
    run_for_s: float | None = None
    verbosity: int = 1

    def build_fleet(self, part: "FleetSlice | None" = None) -> "SimulatorFleet":
        """The whole fleet, or one slice of it (its ports start at base_port + part.first)."""
        from gateway.simulator.fleet import SimulatorFleet

        part = part or FleetSlice(0, self.count)
        return SimulatorFleet(
            list(self.profiles),
            part.count,
            host=self.host,
            base_port=self.base_port + part.first,
            speedup=self.speedup,
            seed=self.seed,
            unit_id=self.unit_id,
            lean=self.lean,
            ignore_writes=self.ignore_writes,
            session_scale=self.session_scale,
            response_delay_s=self.response_delay_s,
            first_index=part.first,
            **({} if self.tick_s is None else {"tick_s": self.tick_s}),
        )


@dataclass(frozen=True)
class FleetSlice:
    """Charge points first..first+count-1 of a fleet."""

    first: int
    count: int

    def ports(self, base_port: int) -> str:
        return f"{base_port + self.first}..{base_port + self.first + self.count - 1}"


def slice_fleet(count: int, processes: int) -> list[FleetSlice]:
    """Contiguous slices, sizes differing by at most one (fewer slices than processes if count is small)."""
    processes = max(1, min(processes, count))
    size, extra = divmod(count, processes)
    slices, first = [], 0
    for index in range(processes):
        length = size + (1 if index < extra else 0)
        slices.append(FleetSlice(first, length))
        first += length
    return slices


def serve_in_processes(plan: FleetPlan, processes: int) -> list[str]:
    """Serve the fleet from `processes` workers until they exit; returns a line per failed worker."""
    context = multiprocessing.get_context("spawn")
    workers = {
        context.Process(
            target=serve_slice, args=(plan, part, os.getpid()), name=f"simulator-{index + 1}", daemon=False
        ): part
        for index, part in enumerate(slice_fleet(plan.count, processes))
    }
    stopping = False

    def stop_workers() -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                worker.terminate()  # SIGTERM: the worker stops its fleet cleanly

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            logger.info("received %s, stopping %s simulator workers", signal.Signals(signum).name, len(workers))
        stop_workers()

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    failures: list[str] = []
    try:
        for worker, part in workers.items():
            if stopping:  # a signal arrived while the others were starting
                break
            worker.start()
            ports = part.ports(plan.base_port)
            logger.info("%s (pid %s): %s charge points on ports %s", worker.name, worker.pid, part.count, ports)
        running = {worker for worker in workers if worker.pid is not None}
        while running:
            ready = multiprocessing.connection.wait([worker.sentinel for worker in running])
            for worker in [w for w in running if w.sentinel in ready]:
                worker.join()
                running.discard(worker)
                # A worker still starting when the stop arrived dies of the SIGTERM itself, before its
                # own handler is installed: that is the stop we asked for, not a failure.
                stopped_by_us = stopping and worker.exitcode == -signal.SIGTERM
                if worker.exitcode != 0 and not stopped_by_us:
                    failure = (
                        f"{worker.name} (pid {worker.pid}, ports {workers[worker].ports(plan.base_port)}) "
                        f"exited with code {worker.exitcode}"
                    )
                    logger.error("%s", failure)
                    failures.append(failure)
                    if not stopping:
                        stop_workers()
    finally:
        stop_workers()
        for worker in workers:
            if worker.pid is not None:
                worker.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return failures


def serve_slice(plan: FleetPlan, part: FleetSlice, parent_pid: int) -> None:
    """A worker's body: build its slice of the fleet and serve it until SIGTERM (or run_for)."""
    # The parent turns a Ctrl-C into SIGTERM for every worker; until the fleet's own handlers are
    # installed, a Ctrl-C here would only print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent_pid)
    import django  # a spawned child starts bare: settings and logging first

    django.setup()
    from gateway.simulator.fleet import serve_fleet

    configure_verbosity(plan.verbosity)
    raise_open_file_limit()
    fleet = plan.build_fleet(part)
    try:
        run_until_stopped(lambda stop: serve_fleet(fleet, stop, run_for_s=plan.run_for_s))
    except OSError as exc:
        logger.error("%s", exc)  # the message says it all: which port, or too many open files
        sys.exit(1)


def _die_with(parent_pid: int) -> None:
    """Get SIGTERM when the parent dies, so that a killed parent leaves no workers behind (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
