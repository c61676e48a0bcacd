"""Site statuses at the server: one SiteSample row per site and instant (stored once however often it
is delivered), pruned with the raw telemetry, pushed to the site page's group; and runconsumer's
site-status consumer from the real Kafka: rows, a site alert, the push, garbage dead-lettered."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from gateway import services
from gateway.choices import AlertKind
from gateway.history import maintenance
from gateway.kafka.config import producer_options
from gateway.kafka.topics import site_status_topic
from gateway.live.groups import site_control_group
from gateway.live.push import push_site_status
from gateway.models import Alert, SiteSample
from gateway.sitecontrol.consume import site_status_dead_letter_topic
from gateway.sitecontrol.messages import SiteStatus
from gateway.sitecontrol.sink import save_site_samples, store_site_samples
from tests.conftest import within
from tests.kafka_read import headers_of, read_all
from tests.test_alerts import create_builtin_rules
from tests.test_sitecontrol_messages import SHARES, T0, site_status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The sinks store through sync_to_async's thread: close its connection before the database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


async def listen(group: str) -> tuple[asyncio.Queue, asyncio.Task, str]:
    """A channel in `group`, as a site page's socket: its events go to the queue."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    events: asyncio.Queue = asyncio.Queue()

    async def receive() -> None:
        while True:
            await events.put(await layer.receive(channel))

    return events, asyncio.create_task(receive()), channel


@pytest.fixture
async def depot_page() -> AsyncIterator[asyncio.Queue]:
    """What the site page of "depot" gets through the channel layer."""
    events, task, channel = await listen(site_control_group("depot"))
    yield events
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await get_channel_layer().group_discard(site_control_group("depot"), channel)


def rows() -> list[tuple]:
    return list(
        SiteSample.objects.order_by("site_slug", "at").values_list(
            "site_slug", "at", "limit_a", "draw_a", "allocated_a", "state"
        )
    )


async def test_each_status_is_one_row_with_its_most_loaded_phase_stored_once(db: None) -> None:
    statuses = [
        site_status(0, chargers=SHARES),
        site_status(5, draw_a=(20.0, 61.5, 30.0)),
        site_status(5, site="yard", draw_a=(9.0, 9.0, 9.0), limit_a=32.0, state="fallback", draw_source="fallback"),
    ]
    await store_site_samples(statuses)
    # A batch delivered again (the consumer is at least once), and in part a third time: nothing twice.
    await store_site_samples(statuses)
    await sync_to_async(save_site_samples)(statuses[1:])
    expected = [
        ("depot", T0, 63.0, 40.0, 32.0, "controlling"),
        ("depot", T0 + timedelta(seconds=5), 63.0, 61.5, 32.0, "controlling"),
        ("yard", T0 + timedelta(seconds=5), 32.0, 9.0, 32.0, "fallback"),
    ]
    assert await sync_to_async(rows)() == expected
    first = await SiteSample.objects.aget(site_slug="depot", at=T0)
    assert SiteStatus.from_json(orjson.dumps(first.status)) == statuses[0]  # the whole status kept


def test_site_samples_are_kept_as_long_as_the_raw_telemetry(db: None, settings: object) -> None:
    now = datetime.now(UTC)
    settings.EVDASH = dict(settings.EVDASH, RETENTION_RAW_DAYS=2)  # type: ignore[attr-defined]
    old = dataclasses.replace(site_status(), at=now - timedelta(days=2, minutes=1))
    recent = dataclasses.replace(site_status(), at=now - timedelta(days=1, hours=23))
    save_site_samples([old, recent])
    report = maintenance.maintain(now)
    assert report["site_samples_deleted"] == 1
    assert list(SiteSample.objects.values_list("at", flat=True)) == [recent.at]


async def test_statuses_are_pushed_in_order_to_their_own_site_page(depot_page: asyncio.Queue) -> None:
    yard_page, yard_task, yard_channel = await listen(site_control_group("yard"))
    try:
        statuses = [site_status(0, chargers=SHARES), site_status(5, site="yard"), site_status(5)]
        await push_site_status(statuses)
        first = await within(depot_page.get(), 5)
        second = await within(depot_page.get(), 5)
        assert first == {"type": "site.status", "status": statuses[0].to_dict()}
        assert second == {"type": "site.status", "status": statuses[2].to_dict()}
        assert (await within(yard_page.get(), 5))["status"]["site"] == "yard"
        assert site_control_group("depot") == "site-control.depot"
    finally:
        yard_task.cancel()
        await asyncio.gather(yard_task, return_exceptions=True)
        await get_channel_layer().group_discard(site_control_group("yard"), yard_channel)
    assert depot_page.empty() and yard_page.empty()


async def produce(topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_run_consumer_stores_alerts_and_pushes_site_statuses_from_kafka(
    kafka: dict, depot_page: asyncio.Queue
) -> None:
    """Produced before the consumer's group exists (it starts from the earliest offset); the draw over
    the limit in two periods raises the site alert; what is not a status is dead-lettered."""
    await sync_to_async(create_builtin_rules)("0015_site_load_management")
    now = datetime.now(UTC).replace(microsecond=0)
    over = (64.0, 50.0, 50.0)
    statuses = [dataclasses.replace(site_status(draw_a=over), at=now + timedelta(seconds=5 * n)) for n in range(2)]
    await produce(
        site_status_topic(),
        [(b"depot", b'{"type": "telemetry"}')] + [(status.key, status.to_json()) for status in statuses],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(services.run_consumer(stop))
    try:
        deadline = time.monotonic() + 30
        while await SiteSample.objects.acount() < 2 or not await Alert.objects.aexists():
            assert not task.done(), f"run_consumer ended: {task.exception()!r}"
            assert time.monotonic() < deadline, "the statuses were not stored and alerted on within 30 s"
            await asyncio.sleep(0.1)
        pushed = [await within(depot_page.get(), 10) for _ in statuses]
    finally:
        stop.set()
        await within(task, 20)
    assert [event["status"] for event in pushed] == [status.to_dict() for status in statuses]
    assert [sample.at async for sample in SiteSample.objects.order_by("at")] == [s.at for s in statuses]
    alert = await Alert.objects.aget()
    assert (alert.kind, alert.charge_point_slug, alert.site_slug, alert.raised_at) == (
        AlertKind.SITE_OVER_LIMIT,
        "depot",
        "depot",
        statuses[1].at,
    )
    [letter] = await read_all(site_status_dead_letter_topic())
    assert (letter.key, letter.value) == (b"depot", b'{"type": "telemetry"}')
    assert headers_of(letter)["evdash.stage"] == "decode"
    assert headers_of(letter)["evdash.reason"] == "InvalidMessage: type: expected 'site_status', got 'telemetry'"
