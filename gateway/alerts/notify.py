"""Delivery of alerts beyond the database: the alerts topic, e-mail and webhooks, from in-memory queues.

The engine only enqueues (never waits), and the notifier job drains the queues beside the
consumer: a mail server or a webhook receiver that is down, refuses or hangs costs its own
deliveries (each bounded by a timeout and a few retries with backoff), never a telemetry batch.

- Kafka (evdash.alerts, key = charge point): published in order, retried with backoff until the
  broker takes them (at least once: a consumer of the topic may see an event twice, same id and
  event).
- E-mail through Django's mail settings (EMAIL_HOST...; skipped with a warning when the SMTP
  backend has no EMAIL_HOST), one mail per rule to its notify_emails.
- Webhook: the alert message POSTed as JSON to the rule's webhook_url.
Mail and webhooks run in a small thread pool of their own: a hanging receiver never holds the
event loop's default executor (which the Kafka clients use to resolve names).

The queues are bounded: past QUEUE_CAPACITY an entry is dropped (logged and counted) rather than
memory growing while a receiver stays down. What is queued when the process stops is flushed for
FLUSH_TIMEOUT_S, then lost: the alert itself is stored.
"""

import asyncio
import logging
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from django.conf import settings
from django.core.mail import get_connection, send_mail

from gateway.kafka.config import producer_options
from gateway.kafka.topics import alerts_topic
from gateway.runtime import Backoff

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
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@dataclass(frozen=True)
class Delivery:
    """One notification: an e-mail to some addresses or a POST to a webhook, of one alert message."""

    channel: str  # "email" or "webhook"
    target: str | tuple[str, ...]
    message: dict[str, Any]

    def describe(self) -> str:
        target = ", ".join(self.target) if isinstance(self.target, tuple) else self.target
        message = self.message
        return f"{self.channel} to {target} ({message['event']} {message['rule']} on {message['charge_point']})"


@dataclass
class NotifierStats:
    published: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0  # deliveries given up after ATTEMPTS
    dropped: int = 0  # over QUEUE_CAPACITY


class AlertNotifier:
    """Queues of alert messages to publish and notifications to deliver; run() drains them until stopped."""

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
        self._messages: deque[dict[str, Any]] = deque()
        self._deliveries: deque[Delivery] = deque()
        self._messages_ready = asyncio.Event()
        self._deliveries_ready = asyncio.Event()
        self._mail_warned = False

    @property
    def pending(self) -> int:
        return len(self._messages) + len(self._deliveries)

    def enqueue(self, message: dict[str, Any], emails: tuple[str, ...] = (), webhook_url: str = "") -> None:
        """Queue an alert message for the topic, and its notifications; never waits."""
        if self.publish:
            self._put(self._messages, message, self._messages_ready)
        if emails:
            self._put(self._deliveries, Delivery("email", emails, message), self._deliveries_ready)
        if webhook_url:
            self._put(self._deliveries, Delivery("webhook", webhook_url, message), self._deliveries_ready)

    def _put(self, queue: deque, item: Any, ready: asyncio.Event) -> None:
        if len(queue) >= self.capacity:
            dropped = queue.popleft()
            self.stats.dropped += 1
            logger.warning("alert notification queue full (%d): dropped the oldest (%s)", self.capacity, dropped)
        queue.append(item)
        ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish and deliver until stop is set; then a last publish of what is queued (FLUSH_TIMEOUT_S)."""
        executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="alert-notify")
        tasks = [
            asyncio.create_task(self._deliver_loop(stop, executor), name=f"alert-notify-{n}")
            for n in range(self.workers)
        ]
        try:
            await self._publish_loop(stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            executor.shutdown(wait=False, cancel_futures=True)
            if self._deliveries:
                logger.warning("%d alert notifications not delivered at shutdown", len(self._deliveries))

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
                await producer.send(topic, orjson.dumps(message), key=message["charge_point"].encode())
                for message in batch
            ]
            await asyncio.gather(*sent)
        for _ in batch:
            self._messages.popleft()
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
            send = self._send_mail if delivery.channel == "email" else self._post_webhook
            backoff = self.retry()
            for attempt in range(1, self.attempts + 1):
                try:
                    # The thread's own timeout ends a hanging receiver; this one is the last word.
                    async with asyncio.timeout(self._timeout_s(delivery) + 1.0):
                        await loop.run_in_executor(executor, send, delivery)
                except Exception as exc:  # whatever the receiver did, it is this delivery's failure
                    if attempt == self.attempts:
                        self.stats.failed += 1
                        logger.error(
                            "alert %s failed after %d attempts: %s", delivery.describe(), attempt, _reason(exc)
                        )
                        break
                    self.stats.retried += 1
                    logger.warning(
                        "alert %s failed (attempt %d of %d: %s); retrying in %.1f s",
                        delivery.describe(),
                        attempt,
                        self.attempts,
                        _reason(exc),
                        backoff.peek_s(),
                    )
                    if await backoff.wait(stop):
                        return
                else:
                    self.stats.sent += 1
                    break

    def _timeout_s(self, delivery: Delivery) -> float:
        return self.mail_timeout_s if delivery.channel == "email" else self.webhook_timeout_s

    def _post_webhook(self, delivery: Delivery) -> None:
        """POST the message as JSON; any answer but 2xx is a failure (urllib raises HTTPError)."""
        assert isinstance(delivery.target, str)
        request = urllib.request.Request(  # noqa: S310 (an http(s) URL from the rule's URLField)
            delivery.target,
            data=orjson.dumps(delivery.message),
            headers={"Content-Type": "application/json", "User-Agent": "evdash-alerts"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.webhook_timeout_s) as response:  # noqa: S310
            response.read()

    def _send_mail(self, delivery: Delivery) -> None:
        if settings.EMAIL_BACKEND == SMTP_BACKEND and not settings.EMAIL_HOST:
            if not self._mail_warned:
                logger.warning("alert e-mails are not sent: EMAIL_HOST is not set")
                self._mail_warned = True
            return
        message = delivery.message
        subject, body = mail_text(message)
        connection = get_connection(timeout=self.mail_timeout_s)
        send_mail(subject, body, None, list(delivery.target), connection=connection)


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
