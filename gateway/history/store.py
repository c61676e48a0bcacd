"""PLACEHOLDER (lane history replaces it): the history sink."""

from gateway.telemetry import Record


async def store_history(records: list[Record]) -> None:
    """Sink: store every record of the batch in the history, idempotently."""
