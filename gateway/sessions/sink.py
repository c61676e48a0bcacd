"""PLACEHOLDER (lane sessions replaces it): the sessions sink."""

from gateway.telemetry import Record


class SessionSink:
    """Sink: derive charging sessions from a batch of records."""

    async def __call__(self, records: list[Record]) -> None:
        return None
