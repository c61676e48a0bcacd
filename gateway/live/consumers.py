"""WebSocket consumers: a logged-in browser subscribes to the fleet or to one charge point.

Messages to the browser (shapes checked in tests/test_live.py):
    {"type": "snapshot", "records": [Record, ...]}   once, right after the socket opens
    {"type": "telemetry", "record": Record}          every record of the subscribed charge points
    {"type": "error", "error": str}                  once, if the client sends anything

Refusals after the handshake carry an application close code (4000-4999, RFC 6455 §7.4.2). The
socket is accepted first and then closed, because a browser sees only 1006 for a refused
handshake: accepting lets the page tell "log in again" from "network down" and stop retrying.
"""

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

from gateway.live.groups import FLEET_GROUP, charge_point_group, session_group
from gateway.live.limits import open_sockets, sockets_per_user_max
from gateway.models import ChargePoint, LatestTelemetry
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

# Login required: not logged in, or logged out while the socket was open.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
# The user already holds settings.EVDASH["WEBSOCKETS_PER_USER"] sockets in this process.
CLOSE_TOO_MANY_SOCKETS = 4429
CLIENT_FRAMES_IGNORED = "this socket only sends; messages from the client are ignored"


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Base: refuses anonymous users, joins groups on connect, relays telemetry events."""

    groups_to_join: list[str]
    counted_user_id: int | None = None
    client_frames = 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        groups = await self.resolve_groups()
        if groups is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        if not open_sockets.try_open(user.pk, sockets_per_user_max()):
            logger.info("user %s: live socket refused, %s already open", user.pk, sockets_per_user_max())
            await self.refuse(CLOSE_TOO_MANY_SOCKETS)
            return
        self.counted_user_id = user.pk
        session_key = getattr(self.scope.get("session"), "session_key", None)
        if session_key:
            groups = [*groups, session_group(session_key)]
        self.groups_to_join = groups
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "snapshot", "records": await self.snapshot()})

    async def refuse(self, code: int) -> None:
        """Accept, then close with `code`: the page can read the code and say why."""
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_to_join", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.counted_user_id is not None:
            open_sockets.release(self.counted_user_id)
            self.counted_user_id = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """The browser only listens: whatever arrives (text, binary, JSON or not) is ignored unparsed.

        The first frame gets one error message back, so a confused client learns why; later frames get
        nothing, so a flood costs no more than reading it.
        """
        self.client_frames += 1
        if self.client_frames == 1:
            await self.send_json({"type": "error", "error": CLIENT_FRAMES_IGNORED})

    async def telemetry_record(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "telemetry", "record": event["record"]})

    async def session_logout(self, event: dict[str, Any]) -> None:
        """The session that opened this socket logged out."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def resolve_groups(self) -> list[str] | None:
        raise NotImplementedError

    async def snapshot(self) -> list[Record]:
        raise NotImplementedError


class FleetConsumer(LiveConsumer):
    """/ws/fleet/: every enabled charge point's telemetry."""

    async def resolve_groups(self) -> list[str] | None:
        return [FLEET_GROUP]

    @database_sync_to_async
    def snapshot(self) -> list[Record]:
        latest = LatestTelemetry.objects.filter(charge_point__enabled=True)
        return [row.record for row in latest.order_by("charge_point__name")]


class ChargePointConsumer(LiveConsumer):
    """/ws/chargepoints/<slug>/: one charge point's telemetry."""

    @database_sync_to_async
    def resolve_groups(self) -> list[str] | None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        if not ChargePoint.objects.filter(slug=slug).exists():
            return None
        self.slug = slug
        return [charge_point_group(slug)]

    @database_sync_to_async
    def snapshot(self) -> list[Record]:
        row = LatestTelemetry.objects.filter(charge_point__slug=self.slug).first()
        return [row.record] if row else []


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other path: refused at the handshake, quietly (URLRouter would raise and log a traceback)."""

    async def connect(self) -> None:
        await self.close()
