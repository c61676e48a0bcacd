"""The contract between whatever produces records (the poller, the bridge) and the transports.

    producer --publish(record)--> OutboxPublisher --append--> Outbox (SQLite WAL, on disk)
                                        |                        ^
                                        +--send(entries)--> Transport (Kafka, MQTT) --acked ids--+

A record is durable once appended; it leaves the outbox only when its transport confirmed
delivery (Kafka acks=all, MQTT PUBACK). Transports know nothing of the outbox, and the outbox
nothing of the transports.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.telemetry import Record


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One stored message, in outbox order (`id` increases with every append)."""

    id: int
    topic: str  # where it goes: a Kafka topic, or an MQTT topic such as evdash/<site>/<cp>/telemetry
    key: bytes  # the charge point's slug: the Kafka key, which keeps its records in one partition
    value: bytes  # the encoded telemetry record (JSON), exactly as it goes on the wire


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a transport confirmed of one send, and why it stopped, if it did.

    `acked`: ids the broker confirmed. For every key they are a prefix of that key's entries in
    the list sent: a transport stops sending a key's (or its partition's) later entries after the
    first failure, so a retry can never put a charge point's records out of order.
    """

    acked: Sequence[int]
    error: BaseException | None = None


class TransportUnavailable(Exception):
    """The broker cannot be reached or refused us; the publisher backs off and retries."""


class Transport(Protocol):
    """Delivers outbox entries to one kind of broker."""

    name: str  # "kafka" or "mqtt", for log lines

    def topic_for(self, record: Record) -> str:
        """The destination of a record on this transport."""
        ...

    async def connect(self) -> None:
        """Connect if not connected; raise TransportUnavailable when the broker is away."""
        ...

    async def send(self, entries: Sequence[OutboxEntry]) -> SendResult:
        """Send in order and wait for the broker's confirmations (or a timeout)."""
        ...

    async def close(self) -> None: ...


class Publisher(Protocol):
    """What the poller publishes through: it never learns which transport is behind it."""

    def publish(self, record: Record) -> None:
        """Queue a record; never blocks the poll loop."""
        ...

    async def start(self) -> None: ...

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything published so far is delivered; False if the timeout came first."""
        ...

    async def close(self, flush_timeout_s: float = 10.0) -> None:
        """Flush what can be flushed in time, then close; the rest stays in the outbox for next start."""
        ...
