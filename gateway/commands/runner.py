"""The poller's side of the command flow: what comes in is checked against the journal and queued,
what comes out (a result) is journaled and published through the poller's outbox.

    command source --deliver--> CommandRunner --submit_command--> Poller (the charge point's queue)
                                     ^ claim (journal, before the write)   |
                                     +--- finish (journal + outbox) <------+

A redelivered command (a restart, a replayed Kafka offset, an MQTT resend) is never written
twice: finished, its stored result is published again; claimed but unfinished (the poller died
between write and result), it fails as interrupted without a write. Results go through the
outbox like telemetry, so a broker outage delays them and loses none.
"""

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.choices import FailureReason
from gateway.commands.journal import CommandJournal
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.publish.publisher import OutboxPublisher
from gateway.telemetry import format_ts

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "the poller restarted after claiming it; not written again"
# A command handed to the poller counts as in progress until its result, or until this long after
# its expiry (its write is claimed before the expiry; settle_s is at most 60 s): a redelivery
# meanwhile is the same command, not a new one, and is ignored.
IN_PROGRESS_AFTER_EXPIRY_S = 120.0


class CommandPoller(Protocol):
    """What the runner needs of the Poller (gateway.modbus.poller.Poller)."""

    tasks: dict

    def submit_command(self, command: CommandMessage) -> bool: ...


class CommandRunner:
    """The Poller's CommandHooks (claim, finish) and the door commands come in by (deliver).

    Runs on the event loop's thread only (deliver from the command source, claim and finish from
    the charge points' tasks): no locking.
    """

    def __init__(
        self,
        poller: CommandPoller,
        publisher: OutboxPublisher,
        journal: CommandJournal,
        *,
        poller_id: str,
        result_topic: Callable[[str, str], str],
    ) -> None:
        self.poller = poller
        self.publisher = publisher
        self.journal = journal
        self.poller_id = poller_id
        self.result_topic = result_topic
        self.delivered = 0
        self.republished = 0  # stored results published again for a redelivered command
        # Results journaled here, by (status, reason code or ""): the commands metric by result.
        self.results: Counter[tuple[str, str]] = Counter()
        self._in_progress: dict[str, datetime] = {}  # id -> until when a redelivery is ignored
        # Called with every result journaled here (the site controllers learn what their commands did).
        self.result_listeners: list[Callable[[CommandResult], None]] = []

    def deliver(self, command: CommandMessage) -> None:
        """Take a command from the source: queue it on its charge point, or answer it from the journal."""
        self.delivered += 1
        logger.info(
            "command %s for %s: %s value=%s user=%s, expires %s",
            command.id,
            command.charge_point,
            command.action,
            command.value,
            command.user,
            format_ts(command.expires_at),
        )
        now = datetime.now(UTC)
        if self._in_progress.get(command.id, now) > now:
            logger.info("command %s: already queued or being carried out here; the copy is ignored", command.id)
            return
        stored = self.journal.result_of(command.id)
        if stored is not None:
            logger.info("command %s: already done (%s); its result is published again", command.id, stored.status)
            self.republished += 1
            self._publish(stored)
            return
        if self.journal.is_claimed(command.id):
            self.finish(
                CommandResult.failed(command, FailureReason.INTERRUPTED, INTERRUPTED_REASON, poller=self.poller_id)
            )
            return
        if command.expired(now):
            if command.charge_point in self.poller.tasks:
                reason = f"expired at {format_ts(command.expires_at)}, before it reached the poller"
                self.finish(CommandResult.failed(command, FailureReason.EXPIRED, reason, poller=self.poller_id))
            else:
                logger.debug("command %s: expired, for %s, which another poller owns", command.id, command.charge_point)
            return
        self._forget_stale(now)
        self._in_progress[command.id] = command.expires_at + timedelta(seconds=IN_PROGRESS_AFTER_EXPIRY_S)
        if not self.poller.submit_command(command):
            del self._in_progress[command.id]
            logger.debug("command %s: %s is not polled here; another poller owns it", command.id, command.charge_point)

    def claim(self, command: CommandMessage) -> bool:
        """Journal the command, durably, just before its write; False: it was claimed before, never write it."""
        if self.journal.claim(command):
            return True
        logger.warning("command %s: claimed before; it is not written again", command.id)
        return False

    def finish(self, result: CommandResult) -> None:
        """Journal the result (the first one stays) and publish it through the outbox."""
        self._in_progress.pop(result.id, None)
        if not self.journal.finish(result):
            logger.warning("command %s: already has a result; this one (%s) is dropped", result.id, result.status)
            return
        self.results[(result.status, result.reason_code or "")] += 1
        logger.info(
            "command %s on %s: %s%s",
            result.id,
            result.charge_point,
            result.status,
            f" ({result.reason_code}: {result.reason})" if result.reason_code else f", read back {result.read_back}",
        )
        self._publish(result)
        for listener in self.result_listeners:
            try:
                listener(result)
            except Exception:
                # A listener's defect never loses the result (journaled and published above).
                logger.exception("command %s: a result listener failed", result.id)

    def _publish(self, result: CommandResult) -> None:
        topic = self.result_topic(result.site, result.charge_point)
        self.publisher.publish_encoded(topic, result.key, result.to_json())
        try:
            # On disk and on its way now, not after the publisher's linger: a result is rare and awaited.
            self.publisher.persist()
        except Exception:
            # It stays queued in memory (and in the journal); the publisher's next persist retries.
            logger.exception("command %s: could not store its result in the outbox yet", result.id)

    def _forget_stale(self, now: datetime) -> None:
        """Drop in-progress entries long past their expiry (a command dropped without a result)."""
        stale = [command_id for command_id, until in self._in_progress.items() if until <= now]
        for command_id in stale:
            del self._in_progress[command_id]
