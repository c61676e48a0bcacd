"""A charge point's queue of operator commands and the limit it holds, drained by its own poll task.

The Poller owns one CommandQueue per charge point it polls, so queued commands and the held
limit outlive a restart of the charge point's loop (an admin edit, a crash). The loop drains the
queue between polls, one command at a time, on its own connection: a write never interleaves
with a poll and no second connection is opened. put() wakes the loop's sleep between polls
(StopWatch.wake): no task per charge point, and nothing to do per poll while the queue is empty.
"""

import logging
from collections.abc import Callable
from typing import Protocol

from gateway.commands.messages import CommandMessage, CommandResult

logger = logging.getLogger(__name__)


class CommandHooks(Protocol):
    """What the poller asks of the command transport (the journal and the result publisher)."""

    def claim(self, command: CommandMessage) -> bool:
        """Durably note the command as being executed, just before its write; False: never write it."""
        ...

    def finish(self, result: CommandResult) -> None:
        """Record and publish a result."""
        ...


class LoggedResults:
    """Hooks for a poller without a command transport (tests, tools): claims everything, logs results."""

    def claim(self, command: CommandMessage) -> bool:
        return True

    def finish(self, result: CommandResult) -> None:
        logger.info(
            "command %s %s on %s: %s %s",
            result.id,
            result.action,
            result.charge_point,
            result.status,
            result.reason or f"(read back {result.read_back})",
        )


class CommandQueue:
    """Commands waiting for one charge point, and the limit and pause state its commands left.

    Only the event loop's thread may call put() (it wakes the loop's sleep).
    """

    __slots__ = ("_commands", "_wake", "active_limit_a", "held_limit_a", "paused", "pending")

    def __init__(self) -> None:
        # A list, not a deque: an empty deque takes ~600 bytes, ×5,000 charge points, for a queue
        # that rarely holds more than one command.
        self._commands: list[CommandMessage] = []
        # The list itself, for the poll loop's per-turn check: a C-level truth test, no method call.
        self.pending = self._commands
        self._wake: Callable[[], None] | None = None
        # The limit an applied set_current_limit set (None: none), and whether an applied pause is
        # in force; active_limit_a is what records show: 0 while paused, else the held limit.
        self.held_limit_a: float | None = None
        self.paused = False
        self.active_limit_a: float | None = None

    def __len__(self) -> int:
        return len(self._commands)

    def __bool__(self) -> bool:
        return bool(self._commands)

    def put(self, command: CommandMessage) -> None:
        """Queue a command and wake the charge point's loop if it is sleeping between polls."""
        self._commands.append(command)
        if self._wake is not None:
            self._wake()

    def take(self) -> CommandMessage | None:
        """The oldest queued command, removed from the queue (None when empty)."""
        return self._commands.pop(0) if self._commands else None

    def take_all(self) -> list[CommandMessage]:
        """Every queued command, removed from the queue."""
        commands = list(self._commands)
        self._commands.clear()
        return commands

    def attach(self, wake: Callable[[], None] | None) -> None:
        """The running loop's wake-up (None when no loop runs): put() calls it."""
        self._wake = wake

    def hold(self, *, limit_a: float | None = None, paused: bool | None = None) -> None:
        """Note what an applied command changed: a new held limit, or the pause state."""
        if limit_a is not None:
            self.held_limit_a = limit_a
        if paused is not None:
            self.paused = paused
        self.active_limit_a = 0.0 if self.paused else self.held_limit_a
