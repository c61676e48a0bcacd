"""GET /api/v1/stream/: Server-Sent Events for integrations, through the real ASGI application.

Each test calls evdash.asgi.application as an ASGI server would (http.request in, http.response.*
out, http.disconnect when the client leaves), and the events come through the dashboard's own push
path (gateway/live/push.py) on the in-memory channel layer this process shares with the stream.
"""

import asyncio
import contextlib
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.utils import timezone

from evdash.asgi import application
from gateway.api import stream
from gateway.live.groups import FLEET_GROUP, site_group
from gateway.live.push import close_session_sockets, push_alerts, push_telemetry
from gateway.models import ApiToken, Site
from tests.conftest import make_charge_point, session_cookie_headers
from tests.test_live import offline_record

pytestmark = pytest.mark.django_db(transaction=True)

HOST = [(b"host", b"127.0.0.1")]


class SseCall:
    """One GET on the ASGI application, as a server with flow control would make it.

    `stall()` makes the server's send wait (the client stopped reading and the socket's buffers are
    full); `resume()` lets it go on.
    """

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        raw_path, _, query = path.partition("?")
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "headers": headers if any(name == b"host" for name, _ in headers) else HOST + headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.started = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def open(self) -> "SseCall":
        await self.inbox.put({"type": "http.request", "body": b"", "more_body": False})
        self.task = asyncio.create_task(application(self.scope, self.inbox.get, self.send))
        await asyncio.wait_for(self.started.wait(), 10)
        return self

    async def send(self, message: dict[str, Any]) -> None:
        await self.flowing.wait()
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
            self.started.set()
        elif message.get("body"):
            self.body += message["body"]
            await self.chunks.put(message["body"])

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def read_until(self, needle: bytes, timeout_s: float = 10.0) -> str:
        """Everything received so far, once it contains `needle`."""
        async with asyncio.timeout(timeout_s):
            while needle not in self.body:
                await self.chunks.get()
        return self.body.decode()

    async def finished(self, timeout_s: float = 10.0) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout_s)

    async def disconnect(self) -> None:
        """The client goes away: the server tells the application, which must end the stream."""
        await self.inbox.put({"type": "http.disconnect"})
        await self.finished()


def events_of(text: str) -> list[dict[str, str]]:
    """The SSE events in `text` (comments skipped): each a dict of its fields."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            events.append(fields)
    return events


STREAM_CHANNEL_PREFIX = "stream."  # the stream's channels: layer.new_channel("stream")


async def members(group: str) -> set[str]:
    """The group's members that are this module's streams: the in-memory layer is the worker
    process's, and a socket of another test module may still be in the fleet group."""
    return {name for name in get_channel_layer().groups.get(group, {}) if name.startswith(STREAM_CHANNEL_PREFIX)}


@pytest.fixture
def user(db: None) -> Any:
    return get_user_model().objects.create_user("integration", password="pw-1234567")


@pytest.fixture
def token(user: Any) -> tuple[ApiToken, str]:
    return ApiToken.issue(user, "billing")


@pytest.fixture
def charge_points(site: Site, generic_profile: Any) -> None:
    make_charge_point(site, generic_profile, "cp-1", 1502)
    make_charge_point(site, generic_profile, "cp-2", 1503)
    other = Site.objects.create(slug="other-site", name="Other")
    make_charge_point(other, generic_profile, "cp-9", 1504)


def bearer(raw: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {raw}".encode())]


async def test_without_credentials_or_with_a_bad_token_it_is_401(token) -> None:
    _row, raw = token
    for headers in ([], bearer("evd_not-a-token"), bearer(raw + "x")):
        call = await SseCall("/api/v1/stream/", headers).open()
        await call.finished()
        assert call.status == 401, headers
        assert call.headers[b"WWW-Authenticate"] == b'Bearer realm="api"'
        assert b'"not_authenticated"' in call.body or b'"authentication_failed"' in call.body
    row, _ = token
    await ApiToken.objects.filter(pk=row.pk).aupdate(revoked_at=timezone.now())
    call = await SseCall("/api/v1/stream/", bearer(raw)).open()
    await call.finished()
    assert call.status == 401 and b"revoked" in call.body


async def test_bad_filters_are_refused(token, charge_points) -> None:
    _row, raw = token
    for path, status in (
        ("/api/v1/stream/?events=telemetry,gossip", 400),
        ("/api/v1/stream/?site=nowhere", 404),
        ("/api/v1/stream/?charge_point=nowhere", 404),
        ("/api/v1/stream/?site=other-site&charge_point=cp-1", 404),
    ):
        call = await SseCall(path, bearer(raw)).open()
        await call.finished()
        assert call.status == status, path
        assert b'"error"' in call.body


async def test_a_token_stream_gets_the_live_telemetry_and_alerts_and_leaves_its_group(token, charge_points) -> None:
    _row, raw = token
    call = await SseCall("/api/v1/stream/", bearer(raw)).open()
    assert call.status == 200
    assert call.headers[b"Content-Type"] == b"text/event-stream"
    assert call.headers[b"Cache-Control"] == b"no-cache"
    await call.read_until(b": connected")
    assert len(await members(FLEET_GROUP)) == 1

    await push_telemetry([offline_record("cp-1", seq=1), offline_record("cp-1", seq=2), offline_record("cp-9")])
    await push_alerts([{"type": "alert", "id": 7, "charge_point": "cp-2", "site": "test-site", "event": "raised"}])
    text = await call.read_until(b"event: alert")
    telemetry, alert = events_of(text)
    assert telemetry["id"] == "1" and telemetry["event"] == "telemetry"
    body = stream.orjson.loads(telemetry["data"])
    # The fleet group: the newest record of each charge point of the batch.
    assert body["type"] == "telemetry"
    assert sorted((r["charge_point"], r["seq"]) for r in body["records"]) == [("cp-1", 2), ("cp-9", 1)]
    assert alert["id"] == "2" and stream.orjson.loads(alert["data"])["alerts"][0]["id"] == 7

    await call.disconnect()
    assert await members(FLEET_GROUP) == set()
    assert stream.streams_open._value.get() == 0


async def test_filters_keep_a_site_or_a_charge_point_and_the_events_asked_for(token, charge_points) -> None:
    _row, raw = token
    site_call = await SseCall("/api/v1/stream/?site=test-site&events=telemetry", bearer(raw)).open()
    cp_call = await SseCall("/api/v1/stream/?charge_point=cp-2", bearer(raw)).open()
    await site_call.read_until(b": connected")
    await cp_call.read_until(b": connected")
    assert len(await members(site_group("test-site"))) == 2

    batch = [offline_record("cp-1", seq=1), offline_record("cp-2", seq=1), offline_record("cp-1", seq=2)]
    await push_telemetry([*batch, offline_record("cp-9", site="other-site")])
    await push_alerts([{"type": "alert", "id": 8, "charge_point": "cp-1", "site": "test-site", "event": "raised"}])
    await push_alerts([{"type": "alert", "id": 9, "charge_point": "cp-2", "site": "test-site", "event": "raised"}])

    cp_events = events_of(await cp_call.read_until(b"event: alert"))
    assert [e["event"] for e in cp_events] == ["telemetry", "alert"]
    assert [r["seq"] for r in stream.orjson.loads(cp_events[0]["data"])["records"]] == [1]
    assert [a["id"] for a in stream.orjson.loads(cp_events[1]["data"])["alerts"]] == [9]

    site_events = events_of(await site_call.read_until(b"event: telemetry"))
    # Every record of the site, in batch order; no alerts (not asked for); nothing of the other site.
    records = stream.orjson.loads(site_events[0]["data"])["records"]
    assert [(r["charge_point"], r["seq"]) for r in records] == [("cp-1", 1), ("cp-2", 1), ("cp-1", 2)]
    await asyncio.sleep(0.1)
    assert [e["event"] for e in events_of(site_call.body.decode())] == ["telemetry"]

    await site_call.disconnect()
    await cp_call.disconnect()
    assert await members(site_group("test-site")) == set()


async def test_heartbeats_while_idle(token, monkeypatch) -> None:
    monkeypatch.setattr(stream, "HEARTBEAT_S", 0.2)
    _row, raw = token
    call = await SseCall("/api/v1/stream/", bearer(raw)).open()
    text = await call.read_until(b": heartbeat\n\n: heartbeat\n\n", timeout_s=5)
    assert text.startswith("retry: 5000\n: connected\n\n")
    await call.disconnect()


async def test_a_session_stream_ends_at_logout_and_a_token_stream_when_revoked(user, token, monkeypatch) -> None:
    monkeypatch.setattr(stream, "TOKEN_RECHECK_S", 0.2)
    headers = await sync_to_async(session_cookie_headers)(user)
    session_call = await SseCall("/api/v1/stream/", headers).open()
    assert session_call.status == 200
    await session_call.read_until(b": connected")
    row, raw = token
    token_call = await SseCall("/api/v1/stream/", bearer(raw)).open()
    await token_call.read_until(b": connected")

    session_key = next(v for k, v in headers if k == b"cookie").decode().split("=", 1)[1]
    await close_session_sockets(session_key)
    assert '"reason":"logged out"' in await session_call.read_until(b"event: end")
    await session_call.finished()  # the stream ended by itself: the server sends the last body message

    await ApiToken.objects.filter(pk=row.pk).aupdate(revoked_at=timezone.now())
    assert "token revoked or expired" in await token_call.read_until(b"event: end")
    await token_call.finished()
    assert await members(FLEET_GROUP) == set()


async def test_a_client_that_stops_reading_is_cut_off_with_bounded_memory(token, charge_points, monkeypatch) -> None:
    monkeypatch.setattr(stream, "QUEUE_MAX_EVENTS", 5)
    _row, raw = token
    call = await SseCall("/api/v1/stream/?site=test-site", bearer(raw)).open()
    await call.read_until(b": connected")
    call.stall()
    for seq in range(1, 40):
        await push_telemetry([offline_record("cp-1", seq=seq)])
    # The stream stopped reading from the layer when its queue of 5 filled: what the layer holds
    # for it is bounded by the layer's capacity, and the stream leaves its groups.
    call.resume()
    text = await call.read_until(b"event: end")
    assert '"reason":"slow client"' in text
    await call.finished()
    assert len([e for e in events_of(text) if e["event"] == "telemetry"]) <= 5 + 1
    assert await members(site_group("test-site")) == set()


async def test_streams_count_against_the_users_live_connections(token, monkeypatch) -> None:
    from django.conf import settings

    monkeypatch.setitem(settings.EVDASH, "WEBSOCKETS_PER_USER", 1)
    _row, raw = token
    first = await SseCall("/api/v1/stream/", bearer(raw)).open()
    await first.read_until(b": connected")
    second = await SseCall("/api/v1/stream/", bearer(raw)).open()
    await second.finished()
    assert second.status == 429
    await first.disconnect()
    third = await SseCall("/api/v1/stream/", bearer(raw)).open()
    await third.read_until(b": connected")
    await third.disconnect()
    with contextlib.suppress(Exception):
        await first.finished()
