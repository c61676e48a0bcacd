"""Alert updates over WebSockets: push_alerts sends one event of a declared shape to the fleet group
and to each alert's site group; the fleet page gets every alert, a site's fleet page its site's,
a charge point page its charge point's, and the telemetry stream goes on beside them."""

import uuid
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections

from evdash.asgi import application
from gateway.live.groups import FLEET_GROUP, site_group
from gateway.live.push import ALERT_EVENT, alert_events, push_alerts, push_telemetry
from gateway.models import Site
from gateway.telemetry import build_record
from tests.conftest import CONNECT_TIMEOUT_S, make_charge_point, session_cookie_headers, within

pytestmark = pytest.mark.django_db(transaction=True)

# The pinned alert message (DESIGN10.md, gateway.alerts.messages.alert_json): the push path passes it on as is.
ALERT_KEYS = {
    "type", "schema_version", "event", "id", "rule", "kind", "severity", "charge_point", "site", "message",
    "value", "raised_at", "cleared_at", "acknowledged_at", "acknowledged_by",
}  # fmt: skip


def alert_message(charge_point: str, site: str, event: str = "raised") -> dict:
    """An alert message in the pinned shape, as alert_json makes it."""
    return {
        "type": "alert",
        "schema_version": 1,
        "event": event,
        "id": str(uuid.uuid4()),
        "rule": "Charger faulted",
        "kind": "faulted",
        "severity": "critical",
        "charge_point": charge_point,
        "site": site,
        "message": f"{charge_point} faulted",
        "value": None,
        "raised_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "cleared_at": None,
        "acknowledged_at": None,
        "acknowledged_by": None,
    }


async def socket(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    """An accepted socket past its snapshot."""
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert connected
    while (await communicator.receive_json_from())["more"]:
        pass
    return communicator


async def operator_headers() -> list[tuple[bytes, bytes]]:
    user = await sync_to_async(get_user_model().objects.create_user)("operator", password="pw-1234567")
    return await sync_to_async(session_cookie_headers)(user)


def test_alert_events_one_per_group_each_with_its_alerts() -> None:
    a1, a2, b1 = alert_message("cp-a", "site-a"), alert_message("cp-b", "site-a"), alert_message("cp-c", "site-b")
    events = alert_events([a1, b1, a2])
    # {"type": "alert.update", "alerts": [alert_json, ...]}: the fleet gets all, in order; each site its own.
    assert ALERT_EVENT == "alert.update"
    assert events == {
        FLEET_GROUP: {"type": "alert.update", "alerts": [a1, b1, a2]},
        site_group("site-a"): {"type": "alert.update", "alerts": [a1, a2]},
        site_group("site-b"): {"type": "alert.update", "alerts": [b1]},
    }
    assert set(a1) == ALERT_KEYS


async def test_push_alerts_reaches_the_groups_through_the_channel_layer() -> None:
    layer = get_channel_layer()
    fleet, site_a = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(FLEET_GROUP, fleet)
    await layer.group_add(site_group("site-a"), site_a)
    alerts = [alert_message("cp-a", "site-a"), alert_message("cp-c", "site-b")]
    await push_alerts(alerts)
    assert await within(layer.receive(fleet), 5) == {"type": ALERT_EVENT, "alerts": alerts}
    assert await within(layer.receive(site_a), 5) == {"type": ALERT_EVENT, "alerts": alerts[:1]}
    await push_alerts([])  # nothing to send: no event
    await push_alerts([alerts[0]])
    assert (await within(layer.receive(fleet), 5))["alerts"] == alerts[:1]


async def test_an_alert_reaches_the_fleet_pages_and_its_charge_points_page_only(site, generic_profile) -> None:
    other = await Site.objects.acreate(slug="other-site", name="Other site")
    for port, (slug, where) in enumerate((("cp-a", site), ("cp-b", site), ("cp-c", other)), start=1502):
        await sync_to_async(make_charge_point)(where, generic_profile, slug, port)
    headers = await operator_headers()
    page_a, page_b, page_c = [await socket(f"/ws/chargepoints/{slug}/", headers) for slug in ("cp-a", "cp-b", "cp-c")]
    fleet = await socket("/ws/fleet/", headers)
    fleet_site, fleet_other = [await socket(f"/ws/fleet/?site={s}", headers) for s in ("test-site", "other-site")]

    raised = alert_message("cp-a", "test-site")
    acknowledged = alert_message("cp-c", "other-site", "acknowledged") | {
        "acknowledged_at": "2025-01-01T00:00:00.000Z",
        "acknowledged_by": "operator",
    }
    await push_alerts([raised, acknowledged])

    # The browser's shape: {"type": "alerts", "alerts": [alert_json, ...]}, one frame per event.
    assert await fleet.receive_json_from() == {"type": "alerts", "alerts": [raised, acknowledged]}
    assert await fleet_site.receive_json_from() == {"type": "alerts", "alerts": [raised]}
    assert await fleet_other.receive_json_from() == {"type": "alerts", "alerts": [acknowledged]}
    assert await page_a.receive_json_from() == {"type": "alerts", "alerts": [raised]}
    assert await page_c.receive_json_from() == {"type": "alerts", "alerts": [acknowledged]}
    # Nothing else: no copy through a second group, nothing for another charge point of the site ...
    sockets = (page_a, page_b, page_c, fleet, fleet_site, fleet_other)
    for communicator in sockets:
        assert await communicator.receive_nothing(timeout=0.2)
    # ... and the telemetry stream goes on beside the alerts.
    await push_telemetry([build_record(charge_point="cp-b", site="test-site", profile="p", seq=4, fields=None)])
    for communicator in (page_b, fleet, fleet_site):
        assert [r["seq"] for r in (await communicator.receive_json_from())["records"]] == [4]
    for communicator in sockets:
        await communicator.disconnect()
    await sync_to_async(connections.close_all)()
