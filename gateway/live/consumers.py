"""WebSocket consumers: a logged-in browser subscribes to the fleet or to one charge point."""

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from gateway.live.groups import FLEET_GROUP, charge_point_group
from gateway.models import ChargePoint, LatestTelemetry
from gateway.telemetry import Record

# Close code for "login required" (4000-4999 are application codes, RFC 6455 §7.4.2).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Base: refuses anonymous users, joins groups on connect, relays telemetry events."""

    groups_to_join: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        groups = await self.resolve_groups()
        if groups is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.groups_to_join = groups
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "snapshot", "records": await self.snapshot()})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_to_join", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The browser only listens; anything it sends is ignored."""

    async def telemetry_record(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "telemetry", "record": event["record"]})

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
