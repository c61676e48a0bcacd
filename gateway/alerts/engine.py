"""PLACEHOLDER (lane alerts engine replaces it): the alert engine, a sink of the live group."""

from typing import Any

from gateway.telemetry import Record


class AlertEngine:
    """Sink: evaluate the alert rules on a batch of records; jobs() are its clock and notifier."""

    async def __call__(self, records: list[Record]) -> None:
        return None

    async def on_command_results(self, commands: list[Any]) -> None:
        """Sink of the command results consumer: a failed command raises an alert."""
        return None

    def jobs(self) -> dict[str, tuple[Any, str]]:
        return {}
