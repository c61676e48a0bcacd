"""Shared by every long-running command: log levels, signal handling, graceful shutdown."""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

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
