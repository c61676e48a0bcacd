"""GET /api/v1/stream/: live telemetry and alerts as Server-Sent Events, for integrations.

    curl -N -H "Authorization: Bearer $TOKEN" \\
        "https://evdash.example/api/v1/stream/?site=depot&events=telemetry,alert"

Authentication: an API token (Authorization: Bearer) or a login session, like every API view.
Filters: ?site=<slug>, ?charge_point=<slug>, ?events=telemetry,alert (default: both).

It rides the dashboard's own push path: the stream joins the channel-layer groups the live
sockets join (gateway/live/groups.py) and receives the events gateway/live/push.py sends; it sends
nothing to groups itself. So:
- without a filter it gets the fleet group: per consumer batch, the newest record of each charge
  point (what the fleet page shows) and every alert;
- with ?site= or ?charge_point= it gets the site's group: every record of the site (or of the
  charge point), and the site's (or charge point's) alerts.
Kafka's telemetry topic is the place for every record of the whole fleet.

The stream, as text/event-stream:
    retry: 5000                 once: how long a client waits before it reconnects
    : connected                 once, when the stream has joined its groups
    id: 1                       per event, counting up from 1 on each connection (no replay)
    event: telemetry            data: {"type": "telemetry", "records": [Record, ...]}
    event: alert                data: {"type": "alerts", "alerts": [alert_json, ...]}
    event: missed               data: {"type": "missed"}: the channel layer dropped events for this
                                stream; read the latest state over REST (telemetry/latest/)
    event: end                  data: {"type": "end", "reason": ...}: the stream closes (logout,
                                token revoked, the client fell behind); reconnect
    : heartbeat                 after HEARTBEAT_S without anything sent, so proxies keep it open

Bounded memory per stream: events wait in a queue of QUEUE_MAX_EVENTS while the client reads; a
client that lets it fill (a server with flow control makes our writes wait for the client) gets
`event: end` with reason "slow client" and the stream closes. Behind the queue the channel
layer's own capacity bounds what waits for this stream's channel.

A stream counts as one of its user's live connections (EVDASH_WEBSOCKETS_PER_USER, shared with the
dashboard's sockets): more are refused with 429.
"""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_safe
from prometheus_client import Gauge
from rest_framework import exceptions

from gateway.api.auth import SCHEME, authenticate_token, token_from_header
from gateway.api.errors import error_body
from gateway.live.consumers import GROUP_REFRESH_S
from gateway.live.gaps import SenderGaps
from gateway.live.groups import FLEET_GROUP, session_group, site_group
from gateway.live.limits import open_sockets, sockets_per_user_max
from gateway.live.push import ALERT_EVENT, LOGOUT_EVENT, TELEMETRY_EVENT
from gateway.models import ApiToken, ChargePoint, Site

logger = logging.getLogger(__name__)

EVENTS = ("telemetry", "alert")
HEARTBEAT_S = 15.0
# How often a token stream asks again whether its token is still active (revoked, expired).
TOKEN_RECHECK_S = 15.0
QUEUE_MAX_EVENTS = 100
RETRY_MS = 5000

streams_open = Gauge("evdash_api_streams_open", "Server-Sent Event streams open in this web process.")


class Filters:
    """What one stream shows: the groups it joins and what it keeps of their events."""

    def __init__(self, site: str | None, charge_point: str | None, events: set[str]) -> None:
        self.site = site
        self.charge_point = charge_point
        self.events = events

    @property
    def groups(self) -> list[str]:
        return [site_group(self.site)] if self.site else [FLEET_GROUP]

    def records(self, records: list[dict]) -> list[dict]:
        if self.charge_point:
            return [record for record in records if record.get("charge_point") == self.charge_point]
        # A site's group carries every record of the batch; the fleet group already the newest of each.
        return records

    def alerts(self, alerts: list[dict]) -> list[dict]:
        if self.charge_point:
            return [alert for alert in alerts if alert.get("charge_point") == self.charge_point]
        return alerts


class Refused(Exception):
    """A request the stream answers with an error body instead of a stream."""

    def __init__(self, status: int, code: str, message: str, fields: dict | None = None) -> None:
        super().__init__(message)
        self.response = JsonResponse(error_body(status, code, message, fields), status=status)


async def parse_filters(request: HttpRequest) -> Filters:
    site = request.GET.get("site") or None
    charge_point = request.GET.get("charge_point") or None
    raw_events = request.GET.get("events") or ",".join(EVENTS)
    events = {event.strip() for event in raw_events.split(",") if event.strip()}
    unknown = sorted(events - set(EVENTS))
    if unknown or not events:
        raise Refused(
            400, "invalid", "The request is not valid; see fields.", {"events": [f"Unknown: {unknown}; use {EVENTS}"]}
        )
    if charge_point:
        cp_site = await ChargePoint.objects.filter(slug=charge_point).values_list("site__slug", flat=True).afirst()
        if cp_site is None or (site and site != cp_site):
            where = f" in site {site!r}" if site else ""
            raise Refused(404, "not_found", f"No charge point {charge_point!r}{where}.")
        site = cp_site
    elif site and not await Site.objects.filter(slug=site).aexists():
        raise Refused(404, "not_found", f"No site {site!r}.")
    return Filters(site, charge_point, events)


def unauthenticated(message: str) -> JsonResponse:
    response = JsonResponse(error_body(401, "not_authenticated", message), status=401)
    response["WWW-Authenticate"] = f'{SCHEME} realm="api"'
    return response


class Slot:
    """One of the user's live connections, released once: by the stream's end, or by garbage
    collection if the response was never streamed (the client left before it started)."""

    def __init__(self, user_id: int) -> None:
        self.user_id: int | None = user_id
        streams_open.inc()

    def release(self) -> None:
        if self.user_id is not None:
            open_sockets.release(self.user_id)
            streams_open.dec()
            self.user_id = None

    def __del__(self) -> None:
        self.release()


def frame(number: int, event: str, data: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (number, event.encode(), orjson.dumps(data))


@require_safe
async def stream(request: HttpRequest) -> HttpResponse:
    """Authenticate (token or session), validate the filters, then stream."""
    token: ApiToken | None = None
    raw = token_from_header(request.META.get("HTTP_AUTHORIZATION", ""))
    if raw is not None:
        try:
            token = await sync_to_async(authenticate_token)(raw)
        except exceptions.AuthenticationFailed as exc:
            return unauthenticated(str(exc.detail))
        user = token.user
    else:
        user = await request.auser()
        if not user.is_authenticated:
            return unauthenticated("Authentication credentials were not provided.")
    try:
        filters = await parse_filters(request)
    except Refused as refused:
        return refused.response
    if not open_sockets.try_open(user.pk, sockets_per_user_max()):
        return JsonResponse(
            error_body(429, "too_many_streams", f"{sockets_per_user_max()} live connections already open."), status=429
        )
    session_key = None if token is not None else getattr(request.session, "session_key", None)
    events = EventStream(filters, Slot(user.pk), token=token, session_key=session_key)
    response = StreamingHttpResponse(events.frames(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


class EventStream:
    """One client's stream: joins the groups, relays their events, leaves them whatever ends it."""

    def __init__(self, filters: Filters, slot: Slot, *, token: ApiToken | None, session_key: str | None) -> None:
        self.filters = filters
        self.slot = slot
        self.token = token
        self.groups = filters.groups + ([session_group(session_key)] if session_key else [])
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX_EVENTS)
        self.overflowed = False
        self.numbers = itertools.count(1)
        self.gaps = SenderGaps()

    async def frames(self) -> AsyncIterator[bytes]:
        layer = get_channel_layer()
        channel = await layer.new_channel("stream")
        reader: asyncio.Task | None = None
        try:
            for group in self.groups:
                await layer.group_add(group, channel)
            reader = asyncio.create_task(self.read(layer, channel), name=f"stream-{channel}")
            yield b"retry: %d\n: connected\n\n" % RETRY_MS
            async for chunk in self.relay(layer, channel):
                yield chunk
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            for group in self.groups:
                with contextlib.suppress(Exception):  # Redis away: its expiry removes the membership
                    await layer.group_discard(group, channel)
            self.slot.release()

    async def read(self, layer: Any, channel: str) -> None:
        """Channel layer -> the bounded queue; a full queue means the client does not keep up."""
        while True:
            event = await layer.receive(channel)
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                # Nothing more is read: the layer drops what comes for this channel, the stream ends.
                self.overflowed = True
                return

    async def relay(self, layer: Any, channel: str) -> AsyncIterator[bytes]:
        now = time.monotonic()
        sent_at, refreshed_at, checked_at = now, now, now
        while True:
            if self.overflowed:
                logger.info("stream %s: the client did not keep up (%d events queued)", channel, QUEUE_MAX_EVENTS)
                yield frame(next(self.numbers), "end", {"type": "end", "reason": "slow client"})
                return
            now = time.monotonic()
            due = min(sent_at + HEARTBEAT_S, refreshed_at + GROUP_REFRESH_S, checked_at + TOKEN_RECHECK_S)
            try:
                event = await asyncio.wait_for(self.queue.get(), max(0.0, due - now))
            except TimeoutError:
                event = None
            now = time.monotonic()
            if event is not None:
                chunks, end = self.render(event)
                for chunk in chunks:
                    yield chunk
                    sent_at = time.monotonic()
                if end is not None:
                    yield frame(next(self.numbers), "end", {"type": "end", "reason": end})
                    return
            if now - refreshed_at >= GROUP_REFRESH_S:
                refreshed_at = now
                await self.join_again(layer, channel)
            if self.token is not None and now - checked_at >= TOKEN_RECHECK_S:
                checked_at = now
                if not await self.token_still_active():
                    yield frame(next(self.numbers), "end", {"type": "end", "reason": "token revoked or expired"})
                    return
            if time.monotonic() - sent_at >= HEARTBEAT_S:
                yield b": heartbeat\n\n"
                sent_at = time.monotonic()

    def render(self, event: dict[str, Any]) -> tuple[list[bytes], str | None]:
        """The frames of one channel-layer event, and why the stream ends after them (or None)."""
        kind = event.get("type")
        if kind == LOGOUT_EVENT:
            return [], "logged out"
        chunks: list[bytes] = []
        if kind == TELEMETRY_EVENT:
            if self.gaps.missed(event):
                chunks.append(frame(next(self.numbers), "missed", {"type": "missed"}))
            if "telemetry" in self.filters.events and (records := self.filters.records(event["records"])):
                chunks.append(frame(next(self.numbers), "telemetry", {"type": "telemetry", "records": records}))
        elif (
            kind == ALERT_EVENT and "alert" in self.filters.events and (alerts := self.filters.alerts(event["alerts"]))
        ):
            chunks.append(frame(next(self.numbers), "alert", {"type": "alerts", "alerts": alerts}))
        return chunks, None

    async def join_again(self, layer: Any, channel: str) -> None:
        """Redis may have lost the groups (restart, flush): join them again, as the live sockets do."""
        try:
            for group in self.groups:
                await layer.group_add(group, channel)
        except Exception:
            logger.warning("stream %s: joining its groups again failed", channel, exc_info=True)

    async def token_still_active(self) -> bool:
        assert self.token is not None
        token = await ApiToken.objects.select_related("user").filter(pk=self.token.pk).afirst()
        return token is not None and token.active and token.user.is_active


urlpatterns = [path("stream/", stream, name="stream")]
