"""WebSocket consumers: a logged-in browser subscribes to what its page shows.

- /ws/fleet/: the newest record of each charge point of every consumer batch;
- /ws/fleet/?site=<slug>: the same, for one site's charge points only;
- /ws/chargepoints/<slug>/: every record of one charge point (for its charts);
- /ws/sites/<slug>/: one site's load management, a SiteStatus per control period (the site page);
- /ws/alerts/: every alert raised, cleared or acknowledged, and no telemetry (the /alerts/ page).

Messages to the browser (shapes checked in tests/test_live.py):
    {"type": "snapshot", "records": [Record, ...], "more": bool}
        right after the socket opens: the latest record of each charge point shown, in frames
        under SNAPSHOT_FRAME_MAX_BYTES; every frame but the last has "more": true
    {"type": "telemetry", "records": [Record, ...]}
        one frame per consumer batch that has records for this page
    {"type": "command", "command": {...}}
        /ws/chargepoints/<slug>/ only: a command to this charge point was sent or completed (one
        frame per command; the command is gateway.commands.service.command_json's dict: id,
        charge_point, action, value, status, reason_code, reason, read_back, username,
        created_at, expires_at, completed_at, latency_ms)
    {"type": "alerts", "alerts": [alert_json, ...]}
        alerts raised, cleared or acknowledged (gateway.alerts.messages.alert_json dicts, in the
        event's order): /ws/fleet/ gets every alert, /ws/fleet/?site=<slug> the site's,
        /ws/chargepoints/<slug>/ the charge point's. No snapshot: the alert feed reads the open
        alerts over HTTP (GET /alerts/?format=json) when it starts and after each reconnect.
        /ws/alerts/ gets every alert, and its snapshot is one empty frame (records []): its only
        news is that the socket is (back) up, so the page reads its alerts again.
    {"type": "snapshot", "statuses": [SiteStatus dict, ...], "more": bool}
        /ws/sites/<slug>/ only, instead of the records' snapshot: the site's statuses of the live
        chart's window (its SiteSample rows, oldest first), in frames as above
    {"type": "site_status", "status": SiteStatus dict}
        /ws/sites/<slug>/ only: the site controller's status of one period
        (gateway.sitecontrol.messages.SiteStatus.to_dict: site, at, state, reason, limit_a, draw_a,
        draw_source, meter_age_s, allocated_a, headroom_a, chargers, ...)
    {"type": "error", "error": str}
        once, if the client sends anything
Pages merge snapshot frames exactly like telemetry frames: a record replaces an older one.

The socket only sends. Commands go through POST /chargepoints/<slug>/commands/ (login, CSRF and the
send_command permission); a frame from the client is never acted on, whatever it says, and the
first one of each socket is logged as a warning with the user and the path (a forged command is
worth knowing about).

Refusals after the handshake carry an application close code (4000-4999, RFC 6455 §7.4.2). The
socket is accepted first and then closed, because a browser sees only 1006 for a refused
handshake: accepting lets the page tell "log in again" from "network down" and stop retrying.

"Live" must mean live. The channel layer drops events silently: Redis keeps them only `expiry`
seconds and `capacity` deep, and a Redis restart or flush loses the groups themselves, after which
an open socket would receive nothing, ever, while its page still said "live". So a socket
- joins its groups again every GROUP_REFRESH_S (a lost membership comes back), and
- checks the sender's numbers on each event (gateway/live/push.py): when one is skipped, it
  missed records, and it closes with CLOSE_RESYNC; the page shows "reconnecting", reconnects and
  starts again from a snapshot.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.utils import timezone

from gateway.live.gaps import SenderGaps
from gateway.live.groups import FLEET_GROUP, session_group, site_control_group, site_group
from gateway.live.limits import open_sockets, sockets_per_user_max
from gateway.models import ChargePoint, LatestTelemetry, Site
from gateway.sitecontrol.report import live_statuses
from gateway.telemetry import Record, newest_per_charge_point

logger = logging.getLogger(__name__)

# Login required: not logged in, or logged out while the socket was open.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
# The user already holds settings.EVDASH["WEBSOCKETS_PER_USER"] sockets in this process.
CLOSE_TOO_MANY_SOCKETS = 4429
# Events for this socket were dropped (it fell behind, or its group was lost): reconnect for a snapshot.
CLOSE_RESYNC = 4503
# How often a socket joins its groups again: a membership lost in Redis is back within this.
GROUP_REFRESH_S = 5.0
CLIENT_FRAMES_IGNORED = "this socket only sends; messages from the client are ignored"
# daphne (autobahn) refuses messages over 1 MiB by default: a snapshot of thousands of charge points
# (~600 bytes each) is sent in frames of at most SNAPSHOT_FRAME_MAX_BYTES, and a telemetry frame
# over FRAME_MAX_BYTES (a big batch of records with large extras) is split.
SNAPSHOT_FRAME_MAX_BYTES = 256 * 1024
FRAME_MAX_BYTES = 768 * 1024


def snapshot_frames(
    records: list[Record], max_bytes: int = SNAPSHOT_FRAME_MAX_BYTES, key: str = "records"
) -> Iterator[dict[str, Any]]:
    """The snapshot messages for `records` (under `key`): each under `max_bytes` encoded, the last
    with "more": false.

    A record larger than `max_bytes` on its own still goes, alone in its frame. No records: one
    empty frame, so the page knows the snapshot is complete.
    """
    overhead = len(orjson.dumps({"type": "snapshot", key: [], "more": False}))
    chunk: list[Record] = []
    size = overhead
    for record in records:
        record_size = len(orjson.dumps(record)) + 1  # and its comma
        if chunk and size + record_size > max_bytes:
            yield {"type": "snapshot", key: chunk, "more": True}
            chunk, size = [], overhead
        chunk.append(record)
        size += record_size
    yield {"type": "snapshot", key: chunk, "more": False}


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Base: refuses anonymous users, joins groups on connect, relays telemetry events."""

    groups_to_join: list[str]
    # What the snapshot frames carry their items under (the site page's are statuses).
    snapshot_key = "records"
    counted_user_id: int | None = None
    client_frames = 0
    refresher: asyncio.Task | None = None
    resyncing = False

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
        self.gaps = SenderGaps()
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self.refresher = asyncio.create_task(self.refresh_groups())
        for frame in snapshot_frames(await self.snapshot(), key=self.snapshot_key):
            await self.send_json(frame)

    async def refresh_groups(self) -> None:
        """Join the groups again now and then: Redis may have lost them (restart, flush)."""
        while True:
            await asyncio.sleep(GROUP_REFRESH_S)
            try:
                for group in self.groups_to_join:
                    await self.channel_layer.group_add(group, self.channel_name)
            except Exception:
                # The layer's own reconnects failed (Redis down): try again at the next refresh.
                logger.warning("live socket %s: joining its groups again failed", self.channel_name, exc_info=True)

    async def refuse(self, code: int) -> None:
        """Accept, then close with `code`: the page can read the code and say why."""
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code: int) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.refresher
            self.refresher = None
        for group in getattr(self, "groups_to_join", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.counted_user_id is not None:
            open_sockets.release(self.counted_user_id)
            self.counted_user_id = None
        if self.client_frames > 1:
            logger.warning(
                "live socket of user %s on %s closed after %s ignored client frames",
                self.user_label(),
                self.scope.get("path"),
                self.client_frames,
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """The browser only listens: whatever arrives (text, binary, JSON or not) is ignored unparsed.

        The first frame gets one error message back, so a confused client learns why; later frames get
        nothing, so a flood costs no more than reading it.
        """
        self.client_frames += 1
        if self.client_frames == 1:
            logger.warning(
                "live socket of user %s on %s: a client frame was ignored (%s); later ones are counted",
                self.user_label(),
                self.scope.get("path"),
                "text" if text_data is not None else "binary",
            )
            await self.send_json({"type": "error", "error": CLIENT_FRAMES_IGNORED})

    def user_label(self) -> str:
        """Who holds this socket, for the log: "<username> (id <pk>)", or "anonymous"."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return "anonymous"
        return f"{user.get_username()} (id {user.pk})"

    async def telemetry_batch(self, event: dict[str, Any]) -> None:
        """One consumer batch for a group this socket joined: send what the page shows, if anything."""
        if self.resyncing:
            return  # closed, waiting for the disconnect
        if self.gaps.missed(event):
            self.resyncing = True
            logger.warning("live socket %s missed events: closing it for a fresh snapshot", self.channel_name)
            await self.close(code=CLOSE_RESYNC)
            return
        records = self.select(event["records"])
        if records:
            await self.send_telemetry(records)

    async def send_telemetry(self, records: list[Record]) -> None:
        """One frame, or halves of it while it is over the frame limit (records with large extras)."""
        text = orjson.dumps({"type": "telemetry", "records": records}).decode()
        if len(text) <= FRAME_MAX_BYTES or len(records) == 1:
            await self.send(text_data=text)
            return
        middle = len(records) // 2
        await self.send_telemetry(records[:middle])
        await self.send_telemetry(records[middle:])

    def select(self, records: list[Record]) -> list[Record]:
        """The records of a group event that this page shows (the fleet group's are all shown)."""
        return records

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        # orjson: a 500-record frame encodes several times faster than with json.dumps.
        return orjson.dumps(content).decode()

    async def command_update(self, event: dict[str, Any]) -> None:
        """Command updates reach every socket of a site group; only charge point pages show them."""

    async def alert_update(self, event: dict[str, Any]) -> None:
        """Alerts raised, cleared or acknowledged, for a group this socket joined: send the page's."""
        if self.resyncing:
            return
        alerts = self.select_alerts(event["alerts"])
        if alerts:
            await self.send_json({"type": "alerts", "alerts": alerts})

    def select_alerts(self, alerts: list[dict]) -> list[dict]:
        """The alerts of a group event that this page shows (a fleet or site group's are all shown)."""
        return alerts

    async def session_logout(self, event: dict[str, Any]) -> None:
        """The session that opened this socket logged out."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def resolve_groups(self) -> list[str] | None:
        raise NotImplementedError

    async def snapshot(self) -> list[Record]:
        raise NotImplementedError


class FleetConsumer(LiveConsumer):
    """/ws/fleet/[?site=<slug>]: the latest state of every enabled charge point, or of one site's."""

    site: str | None = None

    @database_sync_to_async
    def resolve_groups(self) -> list[str] | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        site = (query.get("site") or [""])[0]
        if not site:
            return [FLEET_GROUP]
        if not Site.objects.filter(slug=site).exists():
            return None
        self.site = site
        return [site_group(site)]

    def select(self, records: list[Record]) -> list[Record]:
        # A site's group carries every record of the batch (for charge point pages): keep the newest.
        return newest_per_charge_point(records) if self.site else records

    @database_sync_to_async
    def snapshot(self) -> list[Record]:
        latest = LatestTelemetry.objects.filter(charge_point__enabled=True)
        if self.site:
            latest = latest.filter(charge_point__site__slug=self.site)
        return list(latest.order_by("charge_point__name").values_list("record", flat=True))


class ChargePointConsumer(LiveConsumer):
    """/ws/chargepoints/<slug>/: every record of one charge point.

    It joins its site's group and keeps its own records: the consumer then sends one event per
    site per batch, instead of one per charge point, at the price of this filter (a comparison
    per record of the site) in the web process, for each open charge point page.
    """

    @database_sync_to_async
    def resolve_groups(self) -> list[str] | None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        site = ChargePoint.objects.filter(slug=slug).values_list("site__slug", flat=True).first()
        if site is None:
            return None
        self.slug = slug
        return [site_group(site)]

    def select(self, records: list[Record]) -> list[Record]:
        return [record for record in records if record["charge_point"] == self.slug]

    def select_alerts(self, alerts: list[dict]) -> list[dict]:
        return [alert for alert in alerts if alert.get("charge_point") == self.slug]

    async def command_update(self, event: dict[str, Any]) -> None:
        """Command updates of this charge point's site: send this charge point's, one frame each."""
        if self.resyncing:
            return
        for command in event["commands"]:
            if command.get("charge_point") == self.slug:
                await self.send_json({"type": "command", "command": command})

    @database_sync_to_async
    def snapshot(self) -> list[Record]:
        row = LatestTelemetry.objects.filter(charge_point__slug=self.slug).first()
        return [row.record] if row else []


class SiteConsumer(LiveConsumer):
    """/ws/sites/<slug>/: one site's load management, a status per control period.

    It joins the site's control group (gateway.live.push.push_site_status sends each SiteStatus
    there) and starts with the statuses of the live chart's window from the SiteSample rows. The
    statuses carry no sender numbers: a page that reconnects gets its window again from the rows.
    """

    snapshot_key = "statuses"

    @database_sync_to_async
    def resolve_groups(self) -> list[str] | None:
        slug = self.scope["url_route"]["kwargs"]["slug"]
        if not Site.objects.filter(slug=slug).exists():
            return None
        self.site = slug
        return [site_control_group(slug)]

    async def site_status(self, event: dict[str, Any]) -> None:
        """One period of this site's controller: sent on as it came."""
        if self.resyncing:
            return
        await self.send_json({"type": "site_status", "status": event["status"]})

    @database_sync_to_async
    def snapshot(self) -> list[dict]:
        return live_statuses(self.site, timezone.now())


class AlertsConsumer(LiveConsumer):
    """/ws/alerts/: every alert update (the fleet group carries them all), without the telemetry.

    The /alerts/ page shows no telemetry: the fleet group's telemetry events are dropped here, in
    the web process, rather than sent to the browser. Their sender numbers are still checked: a gap
    means this socket fell behind and alert updates may have been lost with the records, so it
    closes with CLOSE_RESYNC and the page, reconnected, reads its alerts again.
    """

    async def resolve_groups(self) -> list[str] | None:
        return [FLEET_GROUP]

    def select(self, records: list[Record]) -> list[Record]:
        return []

    async def snapshot(self) -> list[Record]:
        return []


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other path: refused at the handshake, quietly (URLRouter would raise and log a traceback)."""

    async def connect(self) -> None:
        await self.close()
