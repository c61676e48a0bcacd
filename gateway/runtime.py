"""Shared by every long-running command: log levels, signal handling, graceful shutdown."""

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.core import checks

# The system checks of the long-running workers (runpoller, runbridge, runconsumer): all but those of
# what serves pages: the URL conf, the admin, the templates (their tag libraries) and DRF's settings
# (Tags.compatibility). They would import the REST API and Django REST framework into each worker:
# ~15 MB more, for nothing. `manage.py check` (make test, deployment) and the web server run them all.
SKIPPED_IN_WORKERS = {checks.Tags.urls, checks.Tags.admin, checks.Tags.templates, checks.Tags.compatibility}
WORKER_CHECKS = [
    tag for name, tag in vars(checks.Tags).items() if not name.startswith("_") and tag not in SKIPPED_IN_WORKERS
]

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def configure_verbosity(verbosity: int) -> None:
    """Map Django's --verbosity onto the gateway's log level."""
    level = VERBOSITY_LEVELS.get(verbosity, logging.INFO)
    logging.getLogger("gateway").setLevel(level)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set `stop`: loops finish their cycle, flush and close."""
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        if not stop.is_set():
            logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop, signum)


async def wait_unless_stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    """Sleep up to timeout_s, waking at once when stop is set; returns whether stop is set.

    The one wait idiom of every loop: retries, backoffs and poll intervals all honour shutdown.
    asyncio.timeout around the event's wait, not asyncio.wait_for: no task per call, which the
    poll loop of every charge point pays every interval.
    """
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            await stop.wait()
    except TimeoutError:
        return stop.is_set()
    return True


class StopWatch:
    """wait_unless_stopped for a loop that waits on one stop event again and again (a charge
    point's poll loop, thousands of times a second across a fleet).

    One task watches the event for the loop's life; each wait is a future and a timer, and ends
    without raising (asyncio.timeout ends every expired wait with a cancellation and a TimeoutError
    travelling up the stack). close() when the loop ends.
    """

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self._watch: asyncio.Task | None = None
        self._waiter: asyncio.Future | None = None

    def wake(self) -> None:
        """End the wait in progress now (a command arrived); nothing when not waiting. Loop thread only."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout_s: float) -> bool:
        """Sleep up to timeout_s, waking at once when stop is set; returns whether stop is set."""
        if self.stop.is_set():
            return True
        loop = asyncio.get_running_loop()
        if self._watch is None:
            self._watch = loop.create_task(self.stop.wait())
        waiter = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        timer = loop.call_later(max(0.0, timeout_s), wake)
        self._watch.add_done_callback(wake)
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
            self._watch.remove_done_callback(wake)
        return self.stop.is_set()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


@dataclass
class Backoff:
    """Exponential backoff: first_s, doubling up to max_s; reset() after a success.

    One mechanism for every retry loop (Kafka producer and consumer, reconnects to chargers).
    """

    first_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    failures: int = field(default=0, init=False)

    def next_delay_s(self) -> float:
        """Delay before the next attempt; each call counts one more failure."""
        delay = min(self.first_s * self.factor**self.failures, self.max_s)
        self.failures += 1
        return delay

    def peek_s(self) -> float:
        """The delay the next failure will give, without counting it."""
        return min(self.first_s * self.factor**self.failures, self.max_s)

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, stop: asyncio.Event) -> bool:
        """Wait out the next delay unless stopped; returns whether stop is set."""
        return await wait_unless_stopped(stop, self.next_delay_s())


def run_until_stopped(
    service: Callable[[asyncio.Event], Awaitable[None]],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run an async service with signal-driven shutdown (the body of every long-running command).

    loop_factory: e.g. uvloop.new_event_loop for a command whose loop is the cost (runpoller).
    """

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await service(stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn so a child process gets SIGTERM when the process that started it dies.

    The demo starts the broker, simulator and poller in sessions of their own (so that one
    Ctrl-C is handled in order by the parent); if the parent is killed outright, this keeps
    them from lingering. Linux only; elsewhere None.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    # Resolved before the fork: the child only makes the call (no imports, no dlopen).
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


def stop_child_process(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s` (the embedded brokers)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def raise_open_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the soft limit now in force.

    A simulated fleet holds a listening socket per charge point and a connection per client, far
    above the usual soft limit of 1,024.
    """
    import resource  # POSIX only; imported here so that runtime.py keeps importing everywhere

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one (Linux caps it at fs.nr_open): ask for 2**20.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %s to %s: %s", soft, target, exc)
        else:
            soft = target
    return soft
