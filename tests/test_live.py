"""WebSockets: login required, origin checked, snapshot then telemetry events of a declared shape."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from evdash.asgi import application
from gateway.live.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from gateway.live.push import TELEMETRY_EVENT, push_telemetry
from gateway.models import LatestTelemetry
from gateway.storage import save_latest
from gateway.telemetry import build_record, decode_record, encode_record
from tests.conftest import make_charge_point, session_cookie_headers

pytestmark = pytest.mark.django_db(transaction=True)


def offline_record(slug: str, seq: int = 1) -> dict:
    return build_record(charge_point=slug, site="test-site", profile="generic-ev-charger", seq=seq, fields=None)


async def logged_in_headers() -> list[tuple[bytes, bytes]]:
    user = await sync_to_async(get_user_model().objects.create_user)("operator", password="pw-1234567")
    return await sync_to_async(session_cookie_headers)(user)


async def test_anonymous_websocket_is_refused() -> None:
    communicator = WebsocketCommunicator(
        application, "/ws/fleet/", headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    )
    connected, code = await communicator.connect()
    assert not connected
    assert code == CLOSE_UNAUTHENTICATED


async def test_foreign_origin_is_refused() -> None:
    headers = [h for h in await logged_in_headers() if h[0] != b"origin"] + [(b"origin", b"http://evil.example")]
    communicator = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    connected, _ = await communicator.connect()
    assert not connected


async def test_unknown_charge_point_is_refused(site, generic_profile) -> None:
    communicator = WebsocketCommunicator(application, "/ws/chargepoints/nope/", headers=await logged_in_headers())
    connected, code = await communicator.connect()
    assert not connected
    assert code == CLOSE_NOT_FOUND


async def test_snapshot_then_live_records(site, generic_profile) -> None:
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-b", 1503)
    await sync_to_async(save_latest)([offline_record("cp-a")])
    headers = await logged_in_headers()

    fleet = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    one = WebsocketCommunicator(application, "/ws/chargepoints/cp-b/", headers=headers)
    assert (await fleet.connect())[0] and (await one.connect())[0]
    snapshot = await fleet.receive_json_from()
    assert snapshot["type"] == "snapshot"
    assert [r["charge_point"] for r in snapshot["records"]] == ["cp-a"]
    assert await one.receive_json_from() == {"type": "snapshot", "records": []}

    await push_telemetry([offline_record("cp-b", seq=5)])
    for communicator in (fleet, one):
        message = await communicator.receive_json_from()
        assert message["type"] == "telemetry"
        # What reaches the browser is still a valid telemetry record.
        assert decode_record(encode_record(message["record"]))["seq"] == 5
    await fleet.disconnect()
    await one.disconnect()


async def test_group_event_shape() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("fleet", channel)
    await push_telemetry([offline_record("cp-x")])
    event = await layer.receive(channel)
    assert set(event) == {"type", "record"}
    assert event["type"] == TELEMETRY_EVENT


def test_save_latest_keeps_the_newest_record_per_charge_point(site, generic_profile) -> None:
    make_charge_point(site, generic_profile, "cp-a", 1502)
    older = offline_record("cp-a", seq=1)
    newer = offline_record("cp-a", seq=2)
    assert save_latest([newer, older, offline_record("ghost")]) == 1
    assert LatestTelemetry.objects.get().record["seq"] == 2
