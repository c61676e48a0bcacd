"""OutboxPublisher: the Publisher every producer uses, the outbox behind it, one transport in front."""

import asyncio
import logging
import time
from dataclasses import dataclass, field

from gateway.publish.base import OutboxEntry, Transport, TransportUnavailable
from gateway.publish.outbox import Outbox
from gateway.runtime import Backoff
from gateway.telemetry import Record, encode_record

logger = logging.getLogger(__name__)

# Records published within this window are appended to the outbox in one transaction (and sent
# in one round): at a few hundred records a second, a transaction or a round per record would
# cost more CPU than the records themselves. 10 ms is far below the end-to-end latency budget,
# and it bounds what a kill -9 can lose: records published but not yet in the outbox.
LINGER_S = 0.01
SEND_AT_MOST = 20_000  # messages per round
# Retries after a failed round back off from 0.5 s up to this: the end of an outage is noticed
# within it, and an attempt every few seconds costs nothing.
RETRY_MAX_S = 5.0


@dataclass
class PublishStats:
    """Counters since start; `buffered`, `dropped` and `oldest_age_s` are read from the outbox."""

    outbox: Outbox = field(repr=False)
    published: int = 0  # handed to publish / publish_encoded
    delivered: int = 0  # confirmed by the transport and removed from the outbox
    failed_sends: int = 0  # messages of sends that failed (they stay in the outbox and are sent again)
    moved_at: float = field(default_factory=time.monotonic)  # the outbox last delivered, or was empty

    def stalled_s(self) -> float:
        """How long records have waited with none delivered (0 when none wait): the transport has
        been away that long. A backlog being delivered is behind, not stalled. The one rule of a
        stuck outbox: readiness (gateway/health/workers.py) and the pipeline page read it."""
        return 0.0 if self.buffered == 0 else max(0.0, time.monotonic() - self.moved_at)

    @property
    def dropped(self) -> int:
        """Dropped by the outbox's size or age limit, oldest first."""
        return self.outbox.dropped

    @property
    def buffered(self) -> int:
        """In the outbox, waiting for their transport."""
        return self.outbox.count

    @property
    def oldest_age_s(self) -> float | None:
        return self.outbox.oldest_age_s()


class OutboxPublisher:
    """Appends what is published to a durable outbox, and sends the outbox through a transport.

    `publish` never blocks: records wait in memory for at most linger_s, then are appended to
    the outbox in one transaction (`persist`). One round at a time, the oldest messages go to the
    transport; those it confirms leave the outbox. A failed send is retried with backoff, from the
    oldest message again: with the transport's prefix rule (base.SendResult) a key's messages
    arrive in order, and the only duplicates are messages in flight when a connection failed.
    Whatever is not delivered at close stays in the outbox for the next start.
    """

    def __init__(
        self, outbox: Outbox, transport: Transport, *, linger_s: float = LINGER_S, send_at_most: int = SEND_AT_MOST
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.linger_s = linger_s
        self.send_at_most = send_at_most
        self.stats = PublishStats(outbox)
        self.in_flight = 0  # messages of the send in progress
        self._pending: list[tuple[str, bytes, bytes]] = []
        self._persist_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()  # something was appended, or closing
        self._progress = asyncio.Event()  # a round ended, or the sender went idle
        self._abandon = asyncio.Event()  # close() gave up flushing
        self._backoff = Backoff(max_s=RETRY_MAX_S)
        self._task: asyncio.Task | None = None
        self._closing = False

    def publish(self, record: Record) -> None:
        self.publish_encoded(self.transport.topic_for(record), record["charge_point"].encode(), encode_record(record))

    def publish_encoded(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue a message as it goes on the wire (the bridge forwards payloads as received)."""
        self._pending.append((topic, key, value))
        self.stats.published += 1
        if self._persist_timer is None and self._loop is not None:
            self._persist_timer = self._loop.call_later(self.linger_s, self._persist_on_timer)

    def persist(self) -> None:
        """Append what publish* queued to the outbox now (the bridge acknowledges MQTT after this)."""
        if self._persist_timer is not None:
            self._persist_timer.cancel()
            self._persist_timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if not self.outbox.count:  # the first record to wait: the wait starts now
            self.stats.moved_at = time.monotonic()
        try:
            self.outbox.append(pending)
        except BaseException:
            self._pending = pending + self._pending  # kept in order for the next attempt
            raise
        self._wakeup.set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"{self.transport.name}-publisher")
        if self._pending:
            self.persist()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything published so far is delivered; False if the timeout came first."""
        self.persist()
        target = self.outbox.last_id  # what an earlier run left in the outbox included
        try:
            async with asyncio.timeout(timeout_s):
                while not self._delivered_up_to(target):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    def _delivered_up_to(self, last_id: int) -> bool:
        oldest = self.outbox.oldest(1)
        return not oldest or oldest[0].id > last_id

    async def close(self, flush_timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within the timeout, then close; the rest stays in the outbox."""
        self._closing = True
        try:
            self.persist()
        except Exception:
            logger.exception("could not store %d records in the outbox at shutdown", len(self._pending))
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), flush_timeout_s)
            except TimeoutError:
                logger.warning(
                    "gave up flushing %d records at shutdown; they stay in the outbox %s for the next start",
                    self.outbox.count,
                    self.outbox.path,
                )
                self._abandon.set()
                self._task.cancel()  # a send may be waiting on the broker
                await asyncio.gather(self._task, return_exceptions=True)
        await self.transport.close()
        self.outbox.close()

    def _persist_on_timer(self) -> None:
        self._persist_timer = None
        try:
            self.persist()
        except Exception:
            # The records stay queued in memory; the next persist tries again.
            logger.exception("could not store %d records in the outbox %s", len(self._pending), self.outbox.path)

    async def _run(self) -> None:
        while True:
            if not self.outbox.count:
                self._progress.set()
                if self._closing and not self._pending:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._send_round()
                self._backoff.reset()
                self._progress.set()
            except (TransportUnavailable, OSError) as exc:
                self._progress.set()  # a partial delivery may be what flush() waits for
                logger.warning(
                    "%s unavailable (%s); %d records buffered, retrying in %.1f s",
                    self.transport.name,
                    exc,
                    self.outbox.count,
                    self._backoff.peek_s(),
                )
                if await self._backoff.wait(self._abandon):
                    return
            except Exception:
                # A bug or a broken outbox file must not end delivery for good: said loudly, retried.
                self._progress.set()
                logger.exception(
                    "%s publisher round failed; %d records buffered, retrying in %.1f s",
                    self.transport.name,
                    self.outbox.count,
                    self._backoff.peek_s(),
                )
                if await self._backoff.wait(self._abandon):
                    return

    async def _send_round(self) -> None:
        await self.transport.connect()
        entries: list[OutboxEntry] = self.outbox.oldest(self.send_at_most)
        self.in_flight = len(entries)
        try:
            result = await self.transport.send(entries)
        finally:
            self.in_flight = 0
        # A record the full outbox dropped while it was in flight was counted as dropped already:
        # each record is counted once (published = delivered + dropped + buffered).
        self.stats.delivered += self.outbox.remove(result.acked)
        if result.acked:
            self.stats.moved_at = time.monotonic()
        if result.error is not None:
            self.stats.failed_sends += len(entries) - len(result.acked)
            error = result.error
            if isinstance(error, TransportUnavailable | OSError):
                raise error
            raise TransportUnavailable(f"{type(error).__name__}: {error}") from error
