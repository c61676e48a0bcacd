"""Shared by every long-running command: log levels, signal handling, graceful shutdown."""

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

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


def run_until_stopped(service: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run an async service with signal-driven shutdown (the body of every long-running command)."""

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await service(stop)

    asyncio.run(main())


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
