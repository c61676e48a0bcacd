"""Horizontal scale: two pollers sharding a fleet by site and two consumers in one group, and every
record reaches the pages once (real simulators, the Tansu broker, the channel layer, WebSockets)."""

import asyncio
import time
from collections import Counter

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections

from evdash.asgi import application
from gateway import services
from gateway.kafka.topics import dead_letter_topic, ensure_topics, telemetry_topic
from gateway.models import Site
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.sinks import live_consumer
from gateway.telemetry import decode_record
from tests.conftest import CONNECT_TIMEOUT_S, make_charge_point, session_cookie_headers, within
from tests.kafka_read import read_all

pytestmark = pytest.mark.django_db(transaction=True)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
SITES = {"site-a": ["cp-a1", "cp-a2"], "site-b": ["cp-b1", "cp-b2"]}
RECORDS_PER_CHARGE_POINT = 4


class Page:
    """A logged-in socket and every (charge point, seq) its telemetry frames carried, in order."""

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.path = path
        self.communicator = WebsocketCommunicator(application, path, headers=headers)
        self.received: list[tuple[str, int]] = []

    async def open(self) -> None:
        assert (await self.communicator.connect(timeout=CONNECT_TIMEOUT_S))[0], self.path
        while (await self.communicator.receive_json_from())["more"]:  # the snapshot's frames
            pass

    async def drain(self) -> None:
        """Take every frame that has arrived."""
        while not await self.communicator.receive_nothing(timeout=0.01):
            message = await self.communicator.receive_json_from()
            assert message["type"] == "telemetry", message
            self.received += [(r["charge_point"], r["seq"]) for r in message["records"]]


async def drain_until(pages: list[Page], condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for page in pages:
            await page.drain()
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param("in-memory", id="in-memory"),
        pytest.param("redis", marks=pytest.mark.production, id="redis"),
    ],
)
async def test_two_pollers_by_site_and_two_consumers_deliver_every_record_once(kafka, generic_profile, layer) -> None:
    expected_layer = "RedisChannelLayer" if layer == "redis" else "InMemoryChannelLayer"
    assert type(get_channel_layer()).__name__ == expected_layer
    topic = telemetry_topic()
    await ensure_topics([topic, dead_letter_topic()], partitions=2)
    user = await sync_to_async(get_user_model().objects.create_user)("operator", password="pw-1234567")
    headers = await sync_to_async(session_cookie_headers)(user)
    slugs = [slug for site_slugs in SITES.values() for slug in site_slugs]

    async with SimulatorFleet(GENERIC, len(slugs), base_port=0, seed=7) as fleet:
        ports = iter(sim.port for sim in fleet.charge_points)
        for site_slug, site_slugs in SITES.items():
            site = await Site.objects.acreate(slug=site_slug, name=site_slug.upper())
            for slug in site_slugs:
                await sync_to_async(make_charge_point)(site, generic_profile, slug, next(ports))

        fleet_page = Page("/ws/fleet/", headers)
        site_a_page = Page("/ws/fleet/?site=site-a", headers)
        charge_point_pages = {slug: Page(f"/ws/chargepoints/{slug}/", headers) for slug in slugs}
        pages = [fleet_page, site_a_page, *charge_point_pages.values()]
        for page in pages:
            await page.open()

        # Both consumers join before any record is produced: the partitions are split once, so
        # no rebalance replays a batch (at-least-once delivery would then repeat it, by design).
        consumers = [live_consumer(topic, auto_offset_reset="earliest") for _ in range(2)]
        stop_consumers, stop_pollers = asyncio.Event(), asyncio.Event()
        consumer_tasks = [asyncio.create_task(services.run_consumer(stop_consumers, c)) for c in consumers]
        poller_tasks = []
        try:
            for consumer in consumers:
                await within(consumer.assigned.wait(), 60)
            poller_tasks = [asyncio.create_task(services.run_poller(stop_pollers, site=site)) for site in SITES]

            def each_page_has_records() -> bool:
                return all(len(p.received) >= RECORDS_PER_CHARGE_POINT for p in charge_point_pages.values())

            await drain_until(pages, each_page_has_records, 60, "records on every charge point page")
            stop_pollers.set()
            await within(asyncio.gather(*poller_tasks), 30)
            in_kafka = [decode_record(message.value) for message in await read_all(topic)]
            sent = Counter((record["charge_point"], record["seq"]) for record in in_kafka)

            newest = {(slug, max(seq for cp, seq in sent if cp == slug)) for slug in slugs}

            def all_sent_arrived() -> bool:
                # Every group's event of the last batch: they travel separately and may arrive apart.
                arrived = Counter(pair for page in charge_point_pages.values() for pair in page.received)
                site_a_newest = {pair for pair in newest if pair[0] in SITES["site-a"]}
                return (
                    arrived == sent
                    and newest <= set(fleet_page.received)
                    and site_a_newest <= set(site_a_page.received)
                )

            await drain_until(pages, all_sent_arrived, 30, f"the {len(in_kafka)} records sent to reach the pages")
        finally:
            stop_pollers.set()
            stop_consumers.set()
            await within(asyncio.gather(*poller_tasks, *consumer_tasks, return_exceptions=True), 30)
            for page in pages:
                await page.communicator.disconnect()
    await sync_to_async(connections.close_all)()

    # Each poller polled its own site only (a charge point polled by both would repeat its seqs),
    # and both sites' records were produced.
    assert set(sent.values()) == {1}, [pair for pair, count in sent.items() if count > 1]
    assert {record["charge_point"] for record in in_kafka} == set(slugs)
    assert all(record["site"] in SITES and record["charge_point"] in SITES[record["site"]] for record in in_kafka)
    # The two consumers shared the work, and together handled each record once.
    assert all(consumer.handled > 0 for consumer in consumers), [c.handled for c in consumers]
    assert sum(consumer.handled for consumer in consumers) == len(in_kafka)
    # Every charge point page got every record of its charge point exactly once, in order.
    for slug, page in charge_point_pages.items():
        assert page.received == sorted(pair for pair in sent.elements() if pair[0] == slug), slug
    # The fleet page: no record twice, nothing that was not sent, and each charge point's newest.
    assert len(fleet_page.received) == len(set(fleet_page.received))
    assert set(fleet_page.received) <= set(sent)
    assert newest <= set(fleet_page.received)
    # The fleet page filtered to site A: site A's records only.
    assert {cp for cp, _seq in site_a_page.received} == set(SITES["site-a"])
    assert len(site_a_page.received) == len(set(site_a_page.received))
