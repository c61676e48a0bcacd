"""Delivery of alerts beyond the database: the alerts topic, e-mail and webhooks, from a durable outbox.

Each stored event (raised, cleared, acknowledged) records in its own transaction the deliveries it
owes (AlertDelivery rows, gateway/alerts/store.py owe()): the alerts topic always, e-mail and
webhook per the rule. The engine hands them to the notifier (never waits), whose job drains them
beside the consumer and marks each one done once delivered (a conditional update: done once). A
mail server or a webhook receiver that is down, refuses or hangs costs its own deliveries (each
bounded by a timeout and a few retries with backoff), never a telemetry batch.

- Kafka (evdash.alerts, key = charge point): published in order, retried with backoff until the
  broker takes them. At least once: an event published but not yet marked done when the process
  stopped is published again at the next start, so a consumer of the topic may see an event
  twice; alert_json's id + event identify it (readers keep the first and ignore a repeat).
- E-mail through Django's mail settings (EMAIL_HOST...; skipped with a warning when the SMTP
  backend has no EMAIL_HOST), one mail per rule to its notify_emails.
- Webhook: the alert message POSTed as JSON to the rule's webhook_url.
Mail and webhooks run in a small thread pool of their own: a hanging receiver never holds the
event loop's default executor (which the Kafka clients use to resolve names). Their failed
attempts are counted on the row, across restarts: after `attempts` of them a delivery is given up
(a warning, status given_up) and never tried again.

Durable: what is owed when the process stops (a broker down, a receiver hanging) stays pending in
the database, and a notifier that starts loads it and delivers it first. The in-memory queues are
bounded: past QUEUE_CAPACITY the oldest entry leaves memory (logged and counted) but stays owed,
for the next start. A notifier with publish=False leaves the topic's deliveries owed.
"""

import asyncio
import logging
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.mail import get_connection, send_mail
from django.db import DatabaseError, close_old_connections

from gateway.alerts import store
from gateway.choices import DeliveryChannel
from gateway.kafka.config import producer_options
from gateway.kafka.topics import alerts_topic
from gateway.models import AlertDelivery
from gateway.runtime import Backoff, wait_unless_stopped

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0
MAIL_TIMEOUT_S = 10.0
ATTEMPTS = 3  # per mail or webhook: the first try and two retries
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 30.0
WORKERS = 4  # mails and webhooks in flight at once
QUEUE_CAPACITY = 10_000
PUBLISH_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 3.0
# How often the notifier looks for owed deliveries queued nowhere (beyond the look at its start).
LOOK_AGAIN_S = 60.0
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


def describe(delivery: AlertDelivery) -> str:
    """e.g. "webhook to http://... (raised Charger faulted on cp-1)"."""
    target = delivery.target.replace("\n", ", ")
    message = delivery.message
    return f"{delivery.channel} to {target} ({message['event']} {message['rule']} on {message['charge_point']})"


@dataclass
class NotifierStats:
    published: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0  # deliveries given up after ATTEMPTS
    dropped: int = 0  # over QUEUE_CAPACITY (left in memory only: still owed, for the next start)
    resumed: int = 0  # owed deliveries loaded and queued at start


class AlertNotifier:
    """Queues of owed deliveries (alert messages to publish, notifications to send); run() loads those
    owed from before, then drains them until stopped."""

    def __init__(
        self,
        *,
        webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
        mail_timeout_s: float = MAIL_TIMEOUT_S,
        attempts: int = ATTEMPTS,
        retry: Callable[[], Backoff] = lambda: Backoff(first_s=RETRY_FIRST_S, max_s=RETRY_MAX_S),
        workers: int = WORKERS,
        capacity: int = QUEUE_CAPACITY,
        publish: bool = True,
    ) -> None:
        self.webhook_timeout_s = webhook_timeout_s
        self.mail_timeout_s = mail_timeout_s
        self.attempts = max(1, attempts)
        self.retry = retry
        self.workers = max(1, workers)
        self.capacity = capacity
        self.publish = publish  # False: nothing goes to Kafka (tests and tools without a broker)
        self.stats = NotifierStats()
        self._messages: deque[AlertDelivery] = deque()  # the topic's
        self._deliveries: deque[AlertDelivery] = deque()  # e-mails and webhooks
        self._owned: set[int] = set()  # ids queued or in flight: a resumed one is not queued twice
        self._messages_ready = asyncio.Event()
        self._deliveries_ready = asyncio.Event()
        self._mail_warned = False
        self.started = asyncio.Event()  # set once run() loaded what was owed
        # Ids finished (done or given up) since the last look at the owed rows: a look that read a
        # row as pending just before it was finished must not queue it again.
        self._finished_since_look: set[int] = set()

    @property
    def pending(self) -> int:
        return len(self._messages) + len(self._deliveries)

    def enqueue(self, deliveries: Iterable[AlertDelivery]) -> None:
        """Queue owed deliveries (stored already); never waits."""
        for delivery in deliveries:
            if delivery.id in self._owned:
                continue
            if delivery.channel == DeliveryChannel.KAFKA:
                if self.publish:
                    self._put(self._messages, delivery, self._messages_ready)
            else:
                self._put(self._deliveries, delivery, self._deliveries_ready)

    def _put(self, queue: deque[AlertDelivery], delivery: AlertDelivery, ready: asyncio.Event) -> None:
        if len(queue) >= self.capacity:
            dropped = queue.popleft()
            self._owned.discard(dropped.id)
            self.stats.dropped += 1
            logger.warning(
                "alert notification queue full (%d): the oldest (%s) waits in the database for the next start",
                self.capacity,
                describe(dropped),
            )
        queue.append(delivery)
        self._owned.add(delivery.id)
        ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver what was owed, then publish and deliver until stop is set; then a last publish of
        what is queued (FLUSH_TIMEOUT_S). What is left stays owed for the next start."""
        await self._resume()
        executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="alert-notify")
        tasks = [
            asyncio.create_task(self._deliver_loop(stop, executor), name=f"alert-notify-{n}")
            for n in range(self.workers)
        ]
        tasks.append(asyncio.create_task(self._look_again(stop), name="alert-notify-owed"))
        try:
            await self._publish_loop(stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            executor.shutdown(wait=False, cancel_futures=True)
            owed = len(self._messages) + len(self._deliveries)
            if owed:
                logger.warning("%d alert notifications not delivered at shutdown: owed, for the next start", owed)

    async def _look_again(self, stop: asyncio.Event) -> None:
        """Every LOOK_AGAIN_S, queue what is owed and queued nowhere: an acknowledgement whose publish
        failed in the web process, a delivery that left a full queue. Only rows older than
        LOOK_AGAIN_S: the web process is still publishing the newer ones itself."""
        while not await wait_unless_stopped(stop, LOOK_AGAIN_S):
            try:
                await self._queue_owed(older_than_s=LOOK_AGAIN_S)
            except DatabaseError as exc:
                logger.warning("could not look at the owed alert notifications (%s); trying again", exc)

    async def _queue_owed(self, older_than_s: float = 0.0) -> int:
        """Queue the owed deliveries not queued yet; returns how many."""
        self._finished_since_look.clear()
        owed = await sync_to_async(store.owed_deliveries)(older_than_s)
        before = len(self._owned)
        self.enqueue(delivery for delivery in owed if delivery.id not in self._finished_since_look)
        return len(self._owned) - before

    async def _resume(self) -> None:
        """Queue the deliveries still owed (oldest first, before any queued meanwhile)."""
        before = len(self._owned)
        try:
            await self._queue_owed()
        except DatabaseError as exc:
            logger.warning(
                "could not load the owed alert notifications (%s); the next look (every LOOK_AGAIN_S) tries again", exc
            )
        for queue in (self._messages, self._deliveries):
            ordered = sorted(queue, key=lambda delivery: delivery.id)
            queue.clear()
            queue.extend(ordered)
        self.stats.resumed = len(self._owned) - before
        if self.stats.resumed:
            logger.info("%d alert notifications owed from before: delivering them", self.stats.resumed)
        self.started.set()

    async def _mark_done(self, deliveries: list[AlertDelivery]) -> None:
        try:
            await sync_to_async(_mark_done)([delivery.id for delivery in deliveries])
        except DatabaseError as exc:  # delivered but still owed: sent again at the next start
            logger.warning("could not mark %d alert notifications delivered: %s", len(deliveries), exc)
        for delivery in deliveries:
            self._owned.discard(delivery.id)
            self._finished_since_look.add(delivery.id)

    # Kafka

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        producer: AIOKafkaProducer | None = None
        backoff = Backoff(first_s=0.5, max_s=RETRY_MAX_S)
        try:
            while not stop.is_set():
                if not self._messages:
                    self._messages_ready.clear()
                    await _wait_either(stop, self._messages_ready)
                    continue
                try:
                    if producer is None:
                        producer = AIOKafkaProducer(**producer_options())
                        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                            await producer.start()
                    await self._publish_queued(producer)
                    backoff.reset()
                except (KafkaError, OSError, TimeoutError) as exc:
                    logger.warning(
                        "could not publish %d alert events (%s: %s); retrying in %.1f s",
                        len(self._messages),
                        type(exc).__name__,
                        exc,
                        backoff.peek_s(),
                    )
                    if producer is not None:
                        await _stop_quietly(producer)
                        producer = None
                    await backoff.wait(stop)
            if producer is not None and self._messages:
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        await self._publish_queued(producer)
                except (KafkaError, OSError, TimeoutError) as exc:
                    logger.warning("%d alert events not published at shutdown (%s)", len(self._messages), exc)
        finally:
            if producer is not None:
                await _stop_quietly(producer)

    async def _publish_queued(self, producer: AIOKafkaProducer) -> None:
        """Send what is queued, in order; it leaves the queue once the broker acknowledged it."""
        batch = list(self._messages)
        topic = alerts_topic()
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            sent = [
                await producer.send(
                    topic, orjson.dumps(delivery.message), key=delivery.message["charge_point"].encode()
                )
                for delivery in batch
            ]
            await asyncio.gather(*sent)
        for _ in batch:
            self._messages.popleft()
        await self._mark_done(batch)
        self.stats.published += len(batch)

    # Mail and webhooks

    async def _deliver_loop(self, stop: asyncio.Event, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if not self._deliveries:
                self._deliveries_ready.clear()
                await _wait_either(stop, self._deliveries_ready)
                continue
            delivery = self._deliveries.popleft()
            send = self._send_mail if delivery.channel == DeliveryChannel.EMAIL else self._post_webhook
            backoff = self.retry()
            # Failed attempts are counted across restarts: a receiver that keeps failing is given up.
            for attempt in range(delivery.attempts + 1, max(self.attempts, delivery.attempts + 1) + 1):
                try:
                    # The thread's own timeout ends a hanging receiver; this one is the last word.
                    async with asyncio.timeout(self._timeout_s(delivery) + 1.0):
                        await loop.run_in_executor(executor, send, delivery)
                except Exception as exc:  # whatever the receiver did, it is this delivery's failure
                    given_up = attempt >= self.attempts
                    await self._note_failed(delivery, given_up)
                    if given_up:
                        self.stats.failed += 1
                        logger.warning(
                            "alert %s given up after %d attempts: %s", describe(delivery), attempt, _reason(exc)
                        )
                        break
                    self.stats.retried += 1
                    logger.warning(
                        "alert %s failed (attempt %d of %d: %s); retrying in %.1f s",
                        describe(delivery),
                        attempt,
                        self.attempts,
                        _reason(exc),
                        backoff.peek_s(),
                    )
                    if await backoff.wait(stop):
                        return
                else:
                    await self._mark_done([delivery])
                    self.stats.sent += 1
                    break

    async def _note_failed(self, delivery: AlertDelivery, given_up: bool) -> None:
        delivery.attempts += 1
        if given_up:
            self._owned.discard(delivery.id)
            self._finished_since_look.add(delivery.id)
        try:
            await sync_to_async(store.note_failed_attempt)(delivery.id, given_up)
        except DatabaseError as exc:
            logger.warning("could not note a failed attempt of alert %s: %s", describe(delivery), exc)

    def _timeout_s(self, delivery: AlertDelivery) -> float:
        return self.mail_timeout_s if delivery.channel == DeliveryChannel.EMAIL else self.webhook_timeout_s

    def _post_webhook(self, delivery: AlertDelivery) -> None:
        """POST the message as JSON; any answer but 2xx is a failure (urllib raises HTTPError)."""
        request = urllib.request.Request(  # noqa: S310 (an http(s) URL from the rule's URLField)
            delivery.target,
            data=orjson.dumps(delivery.message),
            headers={"Content-Type": "application/json", "User-Agent": "evdash-alerts"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.webhook_timeout_s) as response:  # noqa: S310
            response.read()

    def _send_mail(self, delivery: AlertDelivery) -> None:
        if settings.EMAIL_BACKEND == SMTP_BACKEND and not settings.EMAIL_HOST:
            if not self._mail_warned:
                logger.warning("alert e-mails are not sent: EMAIL_HOST is not set")
                self._mail_warned = True
            return
        message = delivery.message
        subject, body = mail_text(message)
        connection = get_connection(timeout=self.mail_timeout_s)
        send_mail(subject, body, None, delivery.target.split("\n"), connection=connection)


def mail_text(message: dict[str, Any]) -> tuple[str, str]:
    """The subject and body of an alert's e-mail."""
    state = message["event"].upper()
    subject = f"[evdash] {state} {message['severity']}: {message['rule']} on {message['charge_point']}"
    lines = [
        message["message"],
        "",
        f"Charge point: {message['charge_point']} (site {message['site'] or '-'})",
        f"Rule: {message['rule']} ({message['kind']}, {message['severity']})",
        f"Raised: {message['raised_at']}",
    ]
    if message["cleared_at"]:
        lines.append(f"Cleared: {message['cleared_at']}")
    if message["value"] is not None:
        lines.append(f"Value: {message['value']:g}")
    lines.append(f"Alert id: {message['id']}")
    return subject, "\n".join(lines) + "\n"


def _mark_done(ids: list[int]) -> None:
    close_old_connections()  # a long-running loop's connection may have gone stale
    store.mark_done(ids)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    return f"{type(exc).__name__}: {exc}"


async def _wait_either(stop: asyncio.Event, ready: asyncio.Event) -> None:
    """Until stop or ready is set."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(ready.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except (KafkaError, OSError) as exc:
        logger.warning("alert producer did not stop cleanly: %s", exc)
