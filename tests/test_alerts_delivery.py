"""Alert delivery: e-mail through Django's mail (locmem), webhooks to real local HTTP servers (one
answering, one refusing, one hanging: bounded retries, the consumer never waits), and the alerts
topic on the real Kafka (raised, cleared, acknowledged), with the live group's consumer running.
Durable: what is owed when a notifier stops is delivered once by the next one; given up is final."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections

from gateway import services, sinks
from gateway.alerts import notify
from gateway.alerts.actions import acknowledge
from gateway.alerts.engine import AlertEngine
from gateway.alerts.notify import AlertNotifier
from gateway.choices import AlertKind, DeliveryChannel, DeliveryStatus
from gateway.kafka.config import producer_options
from gateway.kafka.topics import alerts_topic, ensure_topics, telemetry_topic
from gateway.models import Alert, AlertDelivery, AlertRule, ChargePoint, DeviceProfile, Site
from gateway.runtime import Backoff
from gateway.telemetry import encode_record
from tests.conftest import make_charge_point, wait_for, within
from tests.kafka_read import read_all
from tests.ports import free_port_run
from tests.test_alerts import PINNED_KEYS, Clock, create_builtin_rules, record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def fleet(site: Site, generic_profile: DeviceProfile) -> list[ChargePoint]:
    create_builtin_rules()
    return [make_charge_point(site, generic_profile, f"cp-{n}", 15000 + n) for n in (1, 2)]


class Receiver:
    """A real HTTP server on loopback: answers 204 and keeps the JSON bodies, or reads and never answers."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.requests = 0
        self.bodies: list[dict] = []
        self.server: asyncio.Server | None = None
        self._released = asyncio.Event()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def start(self) -> "Receiver":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    def answer(self) -> None:
        """From now on answer 204 (a request hanging meanwhile is closed unanswered)."""
        self.hang = False
        self._released.set()

    async def stop(self) -> None:
        self._released.set()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            self.requests += 1
            if self.hang:
                await self._released.wait()
            else:
                self.bodies.append(json.loads(body))
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, Receiver]]:
    running = {"ok": await Receiver().start(), "hanging": await Receiver(hang=True).start()}
    yield running
    for receiver in running.values():
        await receiver.stop()


def refused_url() -> str:
    """A loopback port nobody listens on: the connection is refused at once."""
    return f"http://127.0.0.1:{free_port_run(1)}/hook"


async def run_jobs(engine: AlertEngine, stop: asyncio.Event) -> asyncio.Task:
    return asyncio.create_task(engine.notifier.run(stop))


async def test_e_mail_goes_to_the_rules_addresses_on_raise_and_clear(
    fleet: list[ChargePoint], mailoutbox: list
) -> None:
    await AlertRule.objects.filter(kind=AlertKind.FAULTED).aupdate(notify_emails="ops@example.com,\nlead@example.com")
    engine = AlertEngine(clock=Clock(), notifier=AlertNotifier(publish=False))
    stop = asyncio.Event()
    notifier = await run_jobs(engine, stop)
    try:
        await engine([record("cp-1", 1, "faulted", error_code=7), record("cp-2", 1)])
        await engine([record("cp-1", 2, "available")])
        await wait_for(lambda: len(mailoutbox) == 2, what="two alert e-mails")
    finally:
        stop.set()
        await within(notifier, 5)
    raised, cleared = mailoutbox
    assert raised.to == cleared.to == ["ops@example.com", "lead@example.com"]
    assert raised.subject == "[evdash] RAISED critical: Charger faulted on cp-1"
    assert cleared.subject == "[evdash] CLEARED critical: Charger faulted on cp-1"
    alert = await Alert.objects.aget()
    assert f"Alert id: {alert.id}" in raised.body and "error code 7" in raised.body
    assert "Cleared: 2026-03-02T08:00:02.000Z" in cleared.body


async def test_webhooks_that_refuse_or_hang_cost_bounded_retries_and_never_hold_up_a_batch(
    fleet: list[ChargePoint], receivers: dict[str, Receiver]
) -> None:
    timeout_s, attempts = 0.3, 3
    for name, url in (("ok", receivers["ok"].url), ("hanging", receivers["hanging"].url), ("refused", refused_url())):
        await AlertRule.objects.acreate(name=f"Faulted ({name})", kind=AlertKind.FAULTED, webhook_url=url)
    notifier = AlertNotifier(
        publish=False, webhook_timeout_s=timeout_s, attempts=attempts, retry=lambda: Backoff(first_s=0.05, max_s=0.1)
    )
    engine = AlertEngine(clock=Clock(), notifier=notifier)
    stop = asyncio.Event()
    task = await run_jobs(engine, stop)
    episodes = 2
    slowest_s = 0.0
    await engine([])  # its rules and open alerts loaded first: that first look is not a webhook's cost
    try:
        for second in range(40):  # cp-1 faulted for 5 s twice; 100 records a batch
            faulted = (second % 20) in range(5, 10)
            batch = [record("cp-1", second, "faulted" if faulted else "charging")]
            batch += [record("cp-2", second + n / 100, "charging", power_w=7000.0) for n in range(99)]
            began = time.perf_counter()
            await engine(batch)
            slowest_s = max(slowest_s, time.perf_counter() - began)
            await asyncio.sleep(0.02)  # batches keep coming while the notifier works
        events = 2 * episodes  # each episode: raised, cleared
        await wait_for(lambda: notifier.stats.failed == 2 * events, timeout_s=30, what="the failing webhooks given up")
        await wait_for(lambda: notifier.stats.sent == events, what="the answering webhook served")
    finally:
        stop.set()
        await within(task, 5)
    # A batch never waited on a webhook (a hanging one takes timeout_s per attempt).
    assert slowest_s < timeout_s
    assert receivers["hanging"].requests == events * attempts  # bounded: the first try and two retries
    assert notifier.stats.retried == 2 * events * (attempts - 1)
    bodies = receivers["ok"].bodies
    assert [body["event"] for body in bodies] == ["raised", "cleared"] * episodes
    assert all(set(body) == PINNED_KEYS and body["rule"] == "Faulted (ok)" for body in bodies)
    assert len({body["id"] for body in bodies}) == episodes


async def produce(records: list[dict]) -> None:
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for made in records:
            await producer.send(telemetry_topic(), encode_record(made), key=made["charge_point"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def read_alerts(count: int) -> list[Any]:
    deadline = time.monotonic() + 20
    while len(messages := await read_all(alerts_topic())) < count:
        assert time.monotonic() < deadline, f"{len(messages)} of {count} alert messages on the topic"
        await asyncio.sleep(0.1)
    return messages


async def test_the_live_group_publishes_alerts_on_the_alerts_topic_while_a_webhook_hangs(
    kafka: dict, fleet: list[ChargePoint], receivers: dict[str, Receiver]
) -> None:
    await AlertRule.objects.filter(kind=AlertKind.FAULTED).aupdate(webhook_url=receivers["hanging"].url)
    await ensure_topics([telemetry_topic(), alerts_topic()])
    # A receiver that hangs for longer than the test waits: the consumer must not wait on it.
    engine = AlertEngine(notifier=AlertNotifier(webhook_timeout_s=60.0))
    group = sinks.live_group(alerts=engine)
    stop = asyncio.Event()
    jobs = {"consumer": (group.consumer.run, "test"), **group.jobs}
    task = asyncio.create_task(services.run_together(stop, jobs))
    try:
        await within(group.consumer.assigned.wait(), 20)
        statuses = ["charging"] * 50 + ["faulted"] * 50 + ["available"] * 50
        # Recent records (the engine runs on the real clock): nothing goes stale meanwhile.
        base = datetime.now(UTC) - timedelta(seconds=15)
        records = [record("cp-1", n / 10, status, base=base) for n, status in enumerate(statuses)]
        records += [record("cp-2", n / 10, "charging", base=base) for n in range(150)]
        await produce(records)
        await wait_for(lambda: group.consumer.handled == len(records), what="every record handled")
        raised, cleared = await read_alerts(2)
        user = await sync_to_async(get_user_model().objects.create_user)("operator", password="x")
        other = await sync_to_async(get_user_model().objects.create_user)("other", password="x")
        alert = await Alert.objects.aget()
        acknowledged = await sync_to_async(acknowledge)(alert.id, user)
        again = await sync_to_async(acknowledge)(alert.id, other)  # keeps the first
        *_, ack = await read_alerts(3)
    finally:
        stop.set()
        await within(task, 20)
    assert receivers["hanging"].requests >= 1  # the webhook was tried (and is still hanging)
    assert (raised.key, cleared.key, ack.key) == (b"cp-1", b"cp-1", b"cp-1")
    raised, cleared, ack = (orjson.loads(m.value) for m in (raised, cleared, ack))
    assert [m["event"] for m in (raised, cleared, ack)] == ["raised", "cleared", "acknowledged"]
    assert all(set(m) == PINNED_KEYS and m["id"] == str(alert.id) for m in (raised, cleared, ack))
    assert raised["raised_at"] == records[50]["ts"] and cleared["cleared_at"] == records[100]["ts"]
    assert (raised["kind"], raised["severity"], raised["site"]) == ("faulted", "critical", "test-site")
    assert ack["acknowledged_by"] == "operator" and ack["acknowledged_at"] is not None
    assert acknowledged.acknowledged_by_name == again.acknowledged_by_name == "operator"
    assert again.acknowledged_at == acknowledged.acknowledged_at
    assert len(await read_all(alerts_topic())) == 3


async def statuses(channel: str) -> list[tuple[str, str, int]]:
    """(event, status, failed attempts) of the deliveries of a channel, oldest first."""
    rows = AlertDelivery.objects.filter(channel=channel).order_by("id")
    return [(row.event, row.status, row.attempts) async for row in rows]


async def test_what_is_owed_when_the_notifier_stops_is_delivered_once_by_the_next_one(
    kafka: dict, fleet: list[ChargePoint], receivers: dict[str, Receiver], mailoutbox: list, monkeypatch
) -> None:
    hook = receivers["hanging"]
    await AlertRule.objects.filter(kind=AlertKind.FAULTED).aupdate(
        webhook_url=hook.url, notify_emails="ops@example.com"
    )
    await ensure_topics([alerts_topic()])
    # The first notifier: the broker unreachable, the webhook hanging (longer than the test waits).
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port_run(1)}")
    first = AlertNotifier(webhook_timeout_s=60.0)
    engine = AlertEngine(clock=Clock(), notifier=first)
    stop = asyncio.Event()
    task = await run_jobs(engine, stop)
    try:
        await engine([record("cp-1", 1, "faulted", error_code=7)])
        await engine([record("cp-1", 2, "available")])
        await wait_for(
            lambda: hook.requests == 2 and first.stats.sent == 2, what="both webhooks hanging, the mails sent"
        )
    finally:
        stop.set()
        await within(task, 5)
    assert first.stats.published == 0
    owed = [("raised", DeliveryStatus.PENDING, 0), ("cleared", DeliveryStatus.PENDING, 0)]
    assert await statuses(DeliveryChannel.KAFKA) == owed
    assert await statuses(DeliveryChannel.WEBHOOK) == owed
    assert [status for _, status, _ in await statuses(DeliveryChannel.EMAIL)] == [DeliveryStatus.DONE] * 2

    # A restart: the broker and the receiver are back.
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", kafka["KAFKA_BOOTSTRAP_SERVERS"])
    hook.answer()
    for restart in (1, 2):
        notifier = AlertNotifier()
        stop = asyncio.Event()
        task = asyncio.create_task(notifier.run(stop))
        try:
            await within(notifier.started.wait(), 5)
            if restart == 1:
                assert notifier.stats.resumed == 4  # two events: the topic and the webhook each
                await wait_for(
                    lambda notifier=notifier: notifier.stats.published == 2 and notifier.stats.sent == 2,
                    what="the owed delivered",
                )
            else:
                assert notifier.stats.resumed == 0  # the second restart owes nothing
        finally:
            stop.set()
            await within(task, 5)
        done = [("raised", DeliveryStatus.DONE, 0), ("cleared", DeliveryStatus.DONE, 0)]
        assert await statuses(DeliveryChannel.KAFKA) == await statuses(DeliveryChannel.WEBHOOK) == done
    alert = await Alert.objects.aget()
    published = [orjson.loads(message.value) for message in await read_all(alerts_topic())]
    assert [(m["id"], m["event"]) for m in published] == [(str(alert.id), "raised"), (str(alert.id), "cleared")]
    # Webhooks go out in parallel (one worker each): in any order, once each.
    bodies = {body["event"]: body for body in hook.bodies}
    assert len(hook.bodies) == 2 and set(bodies) == {"raised", "cleared"}
    assert all(body["id"] == str(alert.id) for body in hook.bodies)
    # The raise delivered after the clear is the message of the raise, as it was then.
    assert published[0]["cleared_at"] is None and bodies["raised"]["cleared_at"] is None
    assert hook.requests == 4 and len(mailoutbox) == 2  # two hanging, then one per event; mails once


async def test_a_webhook_that_keeps_failing_is_given_up_after_its_attempts_and_not_tried_at_the_next_start(
    fleet: list[ChargePoint], receivers: dict[str, Receiver]
) -> None:
    hook = receivers["hanging"]
    await AlertRule.objects.filter(kind=AlertKind.FAULTED).aupdate(webhook_url=hook.url)
    attempts = 3

    def notifier() -> AlertNotifier:
        return AlertNotifier(
            publish=False, webhook_timeout_s=0.2, attempts=attempts, retry=lambda: Backoff(first_s=0.05, max_s=0.1)
        )

    first = notifier()
    engine = AlertEngine(clock=Clock(), notifier=first)
    stop = asyncio.Event()
    task = await run_jobs(engine, stop)
    try:
        await engine([record("cp-1", 1, "faulted")])
        await wait_for(lambda: first.stats.failed == 1, what="the webhook given up")
    finally:
        stop.set()
        await within(task, 5)
    assert hook.requests == attempts
    assert await statuses(DeliveryChannel.WEBHOOK) == [("raised", DeliveryStatus.GIVEN_UP, attempts)]

    second = notifier()
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        await within(second.started.wait(), 5)
    finally:
        stop.set()
        await within(task, 5)
    assert second.stats.resumed == 0 and hook.requests == attempts
    assert await statuses(DeliveryChannel.WEBHOOK) == [("raised", DeliveryStatus.GIVEN_UP, attempts)]
    # The topic's delivery (this notifier does not publish) is still owed, for one that does.
    assert await statuses(DeliveryChannel.KAFKA) == [("raised", DeliveryStatus.PENDING, 0)]


async def test_failed_attempts_count_across_restarts(fleet: list[ChargePoint], receivers: dict[str, Receiver]) -> None:
    """A receiver that fails before and after a restart gets `attempts` tries in all, not per start."""
    hook = receivers["hanging"]
    await AlertRule.objects.filter(kind=AlertKind.FAULTED).aupdate(webhook_url=hook.url)
    slow = Backoff(first_s=60.0, max_s=60.0)  # the first notifier stops while waiting to retry
    first = AlertNotifier(publish=False, webhook_timeout_s=0.2, attempts=3, retry=lambda: slow)
    engine = AlertEngine(clock=Clock(), notifier=first)
    stop = asyncio.Event()
    task = await run_jobs(engine, stop)
    try:
        await engine([record("cp-1", 1, "faulted")])
        await wait_for(lambda: first.stats.retried == 1, what="the first attempt failed")
    finally:
        stop.set()
        await within(task, 5)
    assert await statuses(DeliveryChannel.WEBHOOK) == [("raised", DeliveryStatus.PENDING, 1)]
    second = AlertNotifier(
        publish=False, webhook_timeout_s=0.2, attempts=3, retry=lambda: Backoff(first_s=0.05, max_s=0.1)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        await wait_for(lambda: second.stats.failed == 1, what="the webhook given up")
    finally:
        stop.set()
        await within(task, 5)
    assert hook.requests == 3 and second.stats.retried == 1
    assert await statuses(DeliveryChannel.WEBHOOK) == [("raised", DeliveryStatus.GIVEN_UP, 3)]


async def test_a_running_notifier_looks_again_for_what_is_owed_and_queued_nowhere(
    kafka: dict, fleet: list[ChargePoint], monkeypatch
) -> None:
    """An event owed by another process (e.g. an acknowledgement the web process could not publish)
    is published by the running notifier's next look, once."""
    monkeypatch.setattr(notify, "LOOK_AGAIN_S", 0.3)
    await ensure_topics([alerts_topic()])
    running = AlertNotifier()
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        await within(running.started.wait(), 5)
        assert running.stats.resumed == 0
        # Another process stores an event and does not publish it.
        elsewhere = AlertEngine(clock=Clock(), notifier=AlertNotifier(publish=False))
        await elsewhere([record("cp-1", 1, "faulted")])
        assert await statuses(DeliveryChannel.KAFKA) == [("raised", DeliveryStatus.PENDING, 0)]
        await wait_for(lambda: running.stats.published == 1, what="the owed event published by a later look")
        await asyncio.sleep(1.0)  # three more looks: nothing is published twice
        assert running.stats.published == 1
    finally:
        stop.set()
        await within(task, 5)
    assert await statuses(DeliveryChannel.KAFKA) == [("raised", DeliveryStatus.DONE, 0)]
    assert len(await read_all(alerts_topic())) == 1
