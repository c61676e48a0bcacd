"""Command updates over WebSockets: push_command_updates reaches the page of the command's charge
point only, in the documented shapes; a frame from the client is never acted on, and is logged."""

import logging
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections

from evdash.asgi import application
from gateway.choices import CommandStatus
from gateway.commands.service import command_json
from gateway.live.consumers import CLIENT_FRAMES_IGNORED
from gateway.live.groups import site_group
from gateway.live.push import COMMAND_EVENT, push_command_updates, push_telemetry
from gateway.models import ChargePoint, Command, Site
from gateway.telemetry import build_record
from tests.conftest import CONNECT_TIMEOUT_S, make_charge_point, session_cookie_headers, within

pytestmark = pytest.mark.django_db(transaction=True)


def store_command(cp: ChargePoint, **fields: object) -> Command:
    now = datetime.now(UTC)
    defaults = {
        "charge_point": cp,
        "charge_point_slug": cp.slug,
        "site_slug": cp.site.slug,
        "action": "set_current_limit",
        "value": 10.0,
        "username": "operator",
        "via": "web",
        "created_at": now,
        "expires_at": now + timedelta(seconds=30),
    }
    return Command.objects.create(**(defaults | fields))


async def socket(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    """An accepted socket past its snapshot."""
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert connected
    while (await communicator.receive_json_from())["more"]:
        pass
    return communicator


async def operator_headers(name: str = "operator") -> list[tuple[bytes, bytes]]:
    user = await sync_to_async(get_user_model().objects.create_user)(name, password="pw-1234567")
    return await sync_to_async(session_cookie_headers)(user)


async def test_a_command_update_reaches_the_page_of_its_charge_point_only(site, generic_profile) -> None:
    other = await Site.objects.acreate(slug="other-site", name="Other site")
    cp_a, _cp_b, cp_c = [
        await sync_to_async(make_charge_point)(where, generic_profile, slug, port)
        for port, (slug, where) in enumerate((("cp-a", site), ("cp-b", site), ("cp-c", other)), start=1502)
    ]
    headers = await operator_headers()
    page_a, page_b, page_c = [await socket(f"/ws/chargepoints/{slug}/", headers) for slug in ("cp-a", "cp-b", "cp-c")]
    fleets = [await socket(path, headers) for path in ("/ws/fleet/", "/ws/fleet/?site=test-site")]

    applied = await sync_to_async(store_command)(cp_a, status=CommandStatus.APPLIED, read_back=10.0)
    pending = await sync_to_async(store_command)(cp_c, action="pause", value=None)
    updates = [command_json(applied), command_json(pending)]
    await push_command_updates(updates)

    # The browser's shape: {"type": "command", "command": command_json}, one frame per command.
    assert await page_a.receive_json_from() == {"type": "command", "command": updates[0]}
    assert await page_c.receive_json_from() == {"type": "command", "command": updates[1]}
    assert set(updates[0]) == {
        "id",
        "charge_point",
        "action",
        "value",
        "status",
        "reason_code",
        "reason",
        "read_back",
        "username",
        "created_at",
        "expires_at",
        "completed_at",
        "latency_ms",
    }
    # Nothing for another charge point's page of the same site, nor for the fleet pages ...
    for communicator in (page_a, page_b, page_c, *fleets):
        assert await communicator.receive_nothing(timeout=0.2)
    # ... which keep streaming (an event type they do not show does not break them).
    await push_telemetry([build_record(charge_point="cp-b", site="test-site", profile="p", seq=4, fields=None)])
    for communicator in (page_b, *fleets):
        assert [r["seq"] for r in (await communicator.receive_json_from())["records"]] == [4]
    for communicator in (page_a, page_b, page_c, *fleets):
        await communicator.disconnect()
    await sync_to_async(connections.close_all)()


async def test_command_update_event_shape_and_site_lookup(site, generic_profile, caplog) -> None:
    cp = await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(site_group("test-site"), channel)
    first = command_json(await sync_to_async(store_command)(cp))
    second = command_json(await sync_to_async(store_command)(cp, action="resume", value=None))
    await push_command_updates([first, second])
    # One event per site: {"type": "command.update", "commands": [command_json, ...]}.
    assert await within(layer.receive(channel), 5) == {"type": COMMAND_EVENT, "commands": [first, second]}
    assert COMMAND_EVENT == "command.update"

    # The site comes from the audit row, so an update of a charge point deleted since still goes
    # to the site it was sent to; a command that names its site is taken at its word.
    await cp.adelete()
    await push_command_updates([first])
    assert await within(layer.receive(channel), 5) == {"type": COMMAND_EVENT, "commands": [first]}
    await push_command_updates([first | {"id": "no-such-row", "site": "test-site"}])
    assert (await within(layer.receive(channel), 5))["commands"][0]["id"] == "no-such-row"
    # An update whose site nobody knows is logged and dropped (never sent to a wrong group).
    caplog.set_level(logging.WARNING)
    unknown = first | {"id": "00000000-0000-0000-0000-000000000001"}
    await push_command_updates([unknown])
    assert any("00000000-0000-0000-0000-000000000001" in r.getMessage() for r in caplog.records)
    await push_command_updates([])


async def test_a_client_frame_is_ignored_and_logged_with_user_and_path(site, generic_profile, caplog) -> None:
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    page = await socket("/ws/chargepoints/cp-a/", await operator_headers("mallory"))
    caplog.set_level(logging.WARNING, logger="gateway.live.consumers")
    forged = '{"type": "command", "action": "set_current_limit", "value": 6, "charge_point": "cp-a"}'
    await page.send_to(text_data=forged)
    assert await page.receive_json_from() == {"type": "error", "error": CLIENT_FRAMES_IGNORED}
    await page.send_to(text_data='{"action": "pause"}')
    await page.send_to(bytes_data=b"\x00pause")
    assert await page.receive_nothing(timeout=0.3)
    # Never acted on: no command exists.
    assert not await Command.objects.aexists()
    [first] = [r.getMessage() for r in caplog.records]
    assert "mallory" in first and "/ws/chargepoints/cp-a/" in first and "ignored" in first
    await page.disconnect()
    # At the close, how many there were in all (one warning, not one per frame of a flood).
    assert len(caplog.records) == 2
    last = caplog.records[-1].getMessage()
    assert "mallory" in last and "/ws/chargepoints/cp-a/" in last and "3 ignored client frames" in last
    await sync_to_async(connections.close_all)()
