"""A live socket never goes silent while its page says "live".

The channel layer drops events without telling anyone: Redis keeps them `expiry` seconds and
`capacity` deep, and a Redis restart or flush loses the groups. A socket joins its groups again
every GROUP_REFRESH_S, and one that missed events closes with CLOSE_RESYNC, so that its page
reconnects and starts again from a snapshot (gateway/live/consumers.py).
"""

import asyncio
import collections
import itertools

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections

from gateway.live import consumers
from gateway.live.consumers import CLOSE_RESYNC
from gateway.live.groups import site_group
from gateway.live.push import push_telemetry
from tests.conftest import make_charge_point
from tests.test_live import accepted, logged_in_headers, offline_record, receive_records

pytestmark = pytest.mark.django_db(transaction=True)

LAYERS = [
    pytest.param("in-memory", id="in-memory"),
    pytest.param("redis", marks=pytest.mark.production, id="redis"),
]
# A group of this module's own: production tests of other modules may use the fleet group meanwhile.
SITE = "backpressure-site"


def layer_is(kind: str) -> None:
    expected = "RedisChannelLayer" if kind == "redis" else "InMemoryChannelLayer"
    assert type(get_channel_layer()).__name__ == expected


async def members(group: str) -> set[str]:
    """The channels in `group`, read from the layer's own storage."""
    layer = get_channel_layer()
    if hasattr(layer, "_group_key"):  # Redis: a sorted set per group
        connection = layer.connection(layer.consistent_hash(group))
        return {name.decode() for name in await connection.zrange(layer._group_key(group), 0, -1)}
    return set(layer.groups.get(group, {}))


async def lose(group: str) -> None:
    """What a Redis restart or flush does to a group: it is gone, with every membership in it."""
    layer = get_channel_layer()
    if hasattr(layer, "_group_key"):
        await layer.connection(layer.consistent_hash(group)).delete(layer._group_key(group))
    else:
        layer.groups.pop(group, None)


async def wait_for(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.05)


async def site_socket(generic_profile) -> tuple[WebsocketCommunicator, str]:
    """A fleet page filtered to SITE, accepted, with its channel name."""
    from gateway.models import Site

    # Redis outlives a test run: sockets of earlier runs that never disconnected may still be members.
    await lose(site_group(SITE))
    site = await Site.objects.acreate(slug=SITE, name="Backpressure site")
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-bp", 1502)
    page = await accepted(f"/ws/fleet/?site={SITE}", await logged_in_headers())
    [channel] = await members(site_group(SITE))
    return page, channel


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_socket_whose_group_was_lost_joins_it_again(generic_profile, monkeypatch, kind: str) -> None:
    layer_is(kind)
    monkeypatch.setattr(consumers, "GROUP_REFRESH_S", 0.1)
    page, channel = await site_socket(generic_profile)
    await lose(site_group(SITE))
    assert channel not in await members(site_group(SITE))

    async def rejoined() -> bool:
        return channel in await members(site_group(SITE))

    # Without this the socket stays open and receives nothing, ever: its page still says "live".
    await wait_for(rejoined, "the socket back in its group")
    await push_telemetry([offline_record("cp-bp", 1, site=SITE)])
    assert await receive_records(page) == [("cp-bp", 1)]
    await page.disconnect()
    await sync_to_async(connections.close_all)()


@pytest.mark.parametrize("kind", LAYERS)
async def test_a_socket_that_missed_events_closes_for_a_fresh_snapshot(generic_profile, kind: str) -> None:
    layer_is(kind)
    page, channel = await site_socket(generic_profile)
    await push_telemetry([offline_record("cp-bp", 1, site=SITE)])
    assert await receive_records(page) == [("cp-bp", 1)]

    # Dropped by the layer: the group lost (as here), the socket's queue over capacity or expired.
    await lose(site_group(SITE))
    await push_telemetry([offline_record("cp-bp", 2, site=SITE)])
    await get_channel_layer().group_add(site_group(SITE), channel)
    await push_telemetry([offline_record("cp-bp", 3, site=SITE)])

    # Not record 3 as if nothing happened: the page must not show a fleet with a hole as live.
    message = await page.receive_output(timeout=5)
    assert message == {"type": "websocket.close", "code": CLOSE_RESYNC}, message
    # Whatever else arrives before the disconnect is not sent: one close, no more frames.
    await push_telemetry([offline_record("cp-bp", 4, site=SITE)])
    assert await page.receive_nothing(timeout=0.2)
    await page.disconnect()
    await sync_to_async(connections.close_all)()


async def test_a_socket_without_gaps_stays_open(site, generic_profile, monkeypatch) -> None:
    """Numbers count per sender: a new sender (a restarted consumer) starts its own count, no false alarm."""
    from gateway.live import push

    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    page = await accepted("/ws/fleet/", await logged_in_headers())
    for seq in (1, 2):
        await push_telemetry([offline_record("cp-a", seq)])
        assert await receive_records(page) == [("cp-a", seq)]
    monkeypatch.setattr(push, "SENDER", "restarted-consumer")
    monkeypatch.setattr(push, "_numbers", collections.defaultdict(lambda: itertools.count(1)))
    await push_telemetry([offline_record("cp-a", 3)])
    assert await receive_records(page) == [("cp-a", 3)]
    await page.disconnect()
