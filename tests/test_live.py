"""WebSockets: login required, same origin only, snapshot then telemetry events of a declared shape,
client frames ignored, unknown paths refused quietly, logout closes sockets, sockets per user capped;
one frame per consumer batch per page, a page gets only what it shows, big snapshots in chunks."""

import logging

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from evdash.asgi import application
from gateway.live.consumers import (
    CLIENT_FRAMES_IGNORED,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHENTICATED,
)
from gateway.live.groups import FLEET_GROUP, session_group, site_group
from gateway.live.limits import open_sockets
from gateway.live.push import LOGOUT_EVENT, SENDER, TELEMETRY_EVENT, close_session_sockets, push_telemetry
from gateway.models import ChargePoint, LatestTelemetry, Site
from gateway.storage import save_latest
from gateway.telemetry import build_record, decode_record, encode_record
from tests.conftest import CONNECT_TIMEOUT_S, make_charge_point, session_cookie_headers

pytestmark = pytest.mark.django_db(transaction=True)

HOST = b"127.0.0.1:8000"
SITE = b"http://127.0.0.1:8000"
# daphne's (autobahn's) default maximum WebSocket message size: a bigger frame never reaches the page.
DAPHNE_MESSAGE_MAX_BYTES = 1024 * 1024


def offline_record(slug: str, seq: int = 1, site: str = "test-site") -> dict:
    return build_record(charge_point=slug, site=site, profile="generic-ev-charger", seq=seq, fields=None)


async def make_user(name: str = "operator") -> object:
    return await sync_to_async(get_user_model().objects.create_user)(name, password="pw-1234567")


async def logged_in_headers(name: str = "operator") -> list[tuple[bytes, bytes]]:
    return await sync_to_async(session_cookie_headers)(await make_user(name))


def log_in(user: object) -> tuple[Client, list[tuple[bytes, bytes]]]:
    """A browser session of `user` on http://127.0.0.1:8000: the client (to log out) and its socket headers."""
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return client, [(b"cookie", cookie.encode()), (b"host", HOST), (b"origin", SITE)]


def with_headers(headers: list[tuple[bytes, bytes]], **replace: bytes | None) -> list[tuple[bytes, bytes]]:
    """`headers` with some replaced (None: removed)."""
    kept = [(name, value) for name, value in headers if name.decode() not in replace]
    return kept + [(name.encode(), value) for name, value in replace.items() if value is not None]


async def accepted(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    """A socket that was accepted and got its snapshot."""
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert connected
    assert (await communicator.receive_json_from())["type"] == "snapshot"
    return communicator


async def close_code_after_accept(communicator: WebsocketCommunicator) -> int:
    """The application close code of a socket that is accepted and closed at once (what a browser can read)."""
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert connected, "refusals the page must explain are sent after the handshake"
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def test_logged_in_socket_is_accepted_and_anonymous_one_refused_with_4401() -> None:
    headers = await logged_in_headers()
    # Positive control: the same request with the session cookie is accepted and gets its snapshot.
    fleet = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    assert (await fleet.connect(timeout=CONNECT_TIMEOUT_S))[0]
    assert await fleet.receive_json_from() == {"type": "snapshot", "records": [], "more": False}
    await fleet.disconnect()

    anonymous = WebsocketCommunicator(application, "/ws/fleet/", headers=with_headers(headers, cookie=None))
    assert await close_code_after_accept(anonymous) == CLOSE_UNAUTHENTICATED
    await anonymous.wait()


@pytest.mark.parametrize(
    "host, origin",
    [
        pytest.param(HOST, b"http://127.0.0.1:8001", id="another-port-same-host"),
        pytest.param(HOST, b"https://127.0.0.1:8000", id="https-page-for-http-site"),
        pytest.param(HOST, b"http://127.0.0.1", id="default-port"),
        pytest.param(HOST, b"http://localhost:8000", id="another-allowed-host"),
        pytest.param(HOST, b"http://evil.example", id="foreign-host"),
        pytest.param(HOST, b"null", id="opaque-origin"),
        pytest.param(HOST, b"http://127.0.0.1:8000/path", id="not-an-origin"),
        pytest.param(HOST, b"http://127.0.0.1:notaport", id="malformed-port"),
        pytest.param(HOST, None, id="no-origin"),
        # DNS rebinding: the attacker's name resolves to us, and Host and Origin agree on it.
        pytest.param(b"evil.example:8000", b"http://evil.example:8000", id="host-not-allowed"),
    ],
)
async def test_socket_from_another_origin_is_refused(host: bytes, origin: bytes | None) -> None:
    headers = with_headers(await logged_in_headers(), host=host, origin=origin)
    communicator = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert not connected  # refused at the handshake: daphne answers HTTP 403, nothing is streamed
    await communicator.wait()


async def test_same_origin_and_trusted_origins_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = with_headers(await logged_in_headers(), host=HOST, origin=SITE)
    await (await accepted("/ws/fleet/", headers)).disconnect()
    # Without a default port in Host, the origin has none either.
    plain = with_headers(headers, host=b"127.0.0.1", origin=b"http://127.0.0.1")
    await (await accepted("/ws/fleet/", plain)).disconnect()

    # Behind the TLS proxy: the scheme comes from the header Django trusts, so https is the site's own
    # origin and http is not.
    monkeypatch.setattr(settings, "SECURE_PROXY_SSL_HEADER", ("HTTP_X_FORWARDED_PROTO", "https"), raising=False)
    proxied = with_headers(headers, origin=b"https://127.0.0.1:8000", **{"x-forwarded-proto": b"https"})
    await (await accepted("/ws/fleet/", proxied)).disconnect()
    downgraded = WebsocketCommunicator(application, "/ws/fleet/", headers=with_headers(proxied, origin=SITE))
    assert not (await downgraded.connect(timeout=CONNECT_TIMEOUT_S))[0]

    # A proxy that rewrites Host: the public origin is listed explicitly.
    monkeypatch.setattr(settings, "CSRF_TRUSTED_ORIGINS", ["https://dash.example.com"])
    public = with_headers(headers, origin=b"https://dash.example.com")
    await (await accepted("/ws/fleet/", public)).disconnect()
    other_port = WebsocketCommunicator(
        application, "/ws/fleet/", headers=with_headers(headers, origin=b"https://dash.example.com:8443")
    )
    assert not (await other_port.connect(timeout=CONNECT_TIMEOUT_S))[0]


async def test_client_frames_are_ignored_without_error_or_close(site, generic_profile, caplog) -> None:
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    fleet = await accepted("/ws/fleet/", await logged_in_headers())
    caplog.set_level(logging.DEBUG)

    await fleet.send_to(text_data="{not json")
    # The first frame is answered once, so a confused client learns why nothing happens.
    assert await fleet.receive_json_from() == {"type": "error", "error": CLIENT_FRAMES_IGNORED}
    await fleet.send_to(bytes_data=b"\x00\xff" * 1000)
    await fleet.send_to(text_data='{"type": "subscribe", "charge_point": "cp-a"}')
    await fleet.send_to(text_data="[" * 100_000)  # nesting that would overflow a recursive parser
    await fleet.send_to(text_data="x" * 900_000)  # just under daphne's 1 MiB message limit
    for index in range(2000):
        await fleet.send_to(text_data=f'{{"n": {index}}}')
    # Later frames get nothing back ...
    assert await fleet.receive_nothing(timeout=0.5)
    # ... and the socket still streams telemetry.
    await push_telemetry([offline_record("cp-a", seq=7)])
    message = await fleet.receive_json_from()
    assert (message["type"], [r["seq"] for r in message["records"]]) == ("telemetry", [7])
    await fleet.disconnect(timeout=CONNECT_TIMEOUT_S)  # the count is logged by the close handler: wait for it
    # Logged (issue 9: a forged command is worth knowing about): the first frame, and the count at the close.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and "2005 ignored client frames" in warnings[1], warnings


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws/chargepoints/a/b/", "/ws/", "/elsewhere"])
@pytest.mark.parametrize("logged_in", [True, False], ids=["logged-in", "anonymous"])
async def test_unknown_path_is_refused_without_a_traceback(path: str, logged_in: bool, caplog) -> None:
    headers = await logged_in_headers()
    if not logged_in:
        headers = with_headers(headers, cookie=None)
    caplog.set_level(logging.DEBUG)
    communicator = WebsocketCommunicator(application, path, headers=headers)
    # A routing error would raise here (and in daphne, log "Exception inside application").
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert not connected
    await communicator.wait()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_unknown_charge_point_is_refused(site, generic_profile) -> None:
    communicator = WebsocketCommunicator(application, "/ws/chargepoints/nope/", headers=await logged_in_headers())
    assert await close_code_after_accept(communicator) == CLOSE_NOT_FOUND
    await communicator.wait()


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param("in-memory", id="in-memory"),
        pytest.param("redis", marks=pytest.mark.production, id="redis"),
    ],
)
async def test_logout_closes_that_sessions_sockets_only(site, generic_profile, layer: str) -> None:
    # Under `make test` the production run uses the Redis layer, which reaches sockets of every process.
    expected = "RedisChannelLayer" if layer == "redis" else "InMemoryChannelLayer"
    assert type(get_channel_layer()).__name__ == expected
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    user = await make_user()
    leaving, leaving_headers = await sync_to_async(log_in)(user)
    _staying, staying_headers = await sync_to_async(log_in)(user)  # the same user on another machine
    fleet = await accepted("/ws/fleet/", leaving_headers)
    one = await accepted("/ws/chargepoints/cp-a/", leaving_headers)
    other = await accepted("/ws/fleet/", staying_headers)

    await sync_to_async(leaving.logout)()  # Django's logout(): the user_logged_out signal

    for communicator in (fleet, one):
        message = await communicator.receive_output(timeout=5)
        assert message == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    # The other session keeps streaming.
    await push_telemetry([offline_record("cp-a", seq=3)])
    assert [r["seq"] for r in (await other.receive_json_from())["records"]] == [3]
    # And the logged-out cookie cannot open a new socket.
    again = WebsocketCommunicator(application, "/ws/fleet/", headers=leaving_headers)
    assert await close_code_after_accept(again) == CLOSE_UNAUTHENTICATED
    for communicator in (fleet, one, other, again):
        await communicator.disconnect()
    assert open_sockets.count(user.pk) == 0
    # The consumers' database connections live in asgiref's sync thread: close them there, so that
    # PostgreSQL lets pytest drop the test database.
    await sync_to_async(connections.close_all)()


async def test_sockets_per_user_are_capped_and_counted_down_on_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.EVDASH, "WEBSOCKETS_PER_USER", 2)
    user = await make_user()
    _, headers = await sync_to_async(log_in)(user)
    first = await accepted("/ws/fleet/", headers)
    second = await accepted("/ws/fleet/", headers)
    assert open_sockets.count(user.pk) == 2

    third = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    assert await close_code_after_accept(third) == CLOSE_TOO_MANY_SOCKETS
    await third.disconnect()
    assert open_sockets.count(user.pk) == 2  # a refused socket is not counted, nor released twice

    # The cap is per user: another user is not affected.
    await (await accepted("/ws/fleet/", await logged_in_headers("another"))).disconnect()

    await first.disconnect()
    assert open_sockets.count(user.pk) == 1
    replacement = await accepted("/ws/fleet/", headers)
    for communicator in (second, replacement):
        await communicator.disconnect()
    assert open_sockets.count(user.pk) == 0


async def test_snapshot_then_live_records(site, generic_profile) -> None:
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-b", 1503)
    await sync_to_async(save_latest)([offline_record("cp-a")])
    headers = await logged_in_headers()

    fleet = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    one = WebsocketCommunicator(application, "/ws/chargepoints/cp-b/", headers=headers)
    assert (await fleet.connect(timeout=CONNECT_TIMEOUT_S))[0] and (await one.connect(timeout=CONNECT_TIMEOUT_S))[0]
    snapshot = await fleet.receive_json_from()
    assert snapshot["type"] == "snapshot"
    assert [r["charge_point"] for r in snapshot["records"]] == ["cp-a"]
    assert await one.receive_json_from() == {"type": "snapshot", "records": [], "more": False}

    await push_telemetry([offline_record("cp-b", seq=5)])
    for communicator in (fleet, one):
        message = await communicator.receive_json_from()
        assert set(message) == {"type", "records"} and message["type"] == "telemetry"
        # What reaches the browser is still a valid telemetry record.
        [record] = message["records"]
        assert decode_record(encode_record(record))["seq"] == 5
    await fleet.disconnect()
    await one.disconnect()


async def test_group_event_shapes() -> None:
    layer = get_channel_layer()
    fleet, site = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(FLEET_GROUP, fleet)
    await layer.group_add(site_group("site-a"), site)
    batch = [offline_record("cp-x", 1, site="site-a"), offline_record("cp-x", 2, site="site-a")]
    await push_telemetry(batch)
    await push_telemetry(batch)
    # One event per group per batch: the fleet's has the newest record of each charge point, the
    # site's every record (for the charge point pages). Each carries its sender and a number that
    # counts up per group, so a socket can tell that the layer dropped events.
    first_fleet, first_site = await layer.receive(fleet), await layer.receive(site)
    assert first_fleet == {"type": TELEMETRY_EVENT, "records": batch[1:], "sender": SENDER, "n": first_fleet["n"]}
    assert first_site == {"type": TELEMETRY_EVENT, "records": batch, "sender": SENDER, "n": first_site["n"]}
    assert (await layer.receive(fleet))["n"] == first_fleet["n"] + 1
    assert (await layer.receive(site))["n"] == first_site["n"] + 1
    channel = site

    await layer.group_add(session_group("abc123"), channel)
    await close_session_sockets("abc123")
    assert await layer.receive(channel) == {"type": LOGOUT_EVENT}
    # The session key never appears in a group name (they are Redis keys in production).
    assert "abc123" not in session_group("abc123")


def test_save_latest_keeps_the_newest_record_per_charge_point(site, generic_profile) -> None:
    make_charge_point(site, generic_profile, "cp-a", 1502)
    older = offline_record("cp-a", seq=1)
    newer = offline_record("cp-a", seq=2)
    assert save_latest([newer, older, offline_record("ghost")]) == 1
    assert LatestTelemetry.objects.get().record["seq"] == 2


async def receive_records(communicator: WebsocketCommunicator) -> list[tuple[str, int]]:
    """(charge point, seq) of the next frame, which must be a telemetry frame."""
    message = await communicator.receive_json_from()
    assert set(message) == {"type", "records"} and message["type"] == "telemetry", message
    return [(r["charge_point"], r["seq"]) for r in message["records"]]


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param("in-memory", id="in-memory"),
        pytest.param("redis", marks=pytest.mark.production, id="redis"),
    ],
)
async def test_one_frame_per_batch_and_each_page_gets_what_it_shows(site, generic_profile, layer: str) -> None:
    expected = "RedisChannelLayer" if layer == "redis" else "InMemoryChannelLayer"
    assert type(get_channel_layer()).__name__ == expected
    other = await Site.objects.acreate(slug="other-site", name="Other site")
    for port, (slug, where) in enumerate((("cp-a", site), ("cp-b", site), ("cp-c", other)), start=1502):
        await sync_to_async(make_charge_point)(where, generic_profile, slug, port)
    headers = await logged_in_headers()
    fleet = await accepted("/ws/fleet/", headers)
    one_site = await accepted("/ws/fleet/?site=test-site", headers)
    page_a = await accepted("/ws/chargepoints/cp-a/", headers)
    page_c = await accepted("/ws/chargepoints/cp-c/", headers)

    # One consumer batch: three records of cp-a, one of cp-b, one of cp-c (another site).
    batch = [offline_record("cp-a", seq) for seq in (1, 2, 3)]
    batch += [offline_record("cp-b", 1), offline_record("cp-c", 1, site="other-site")]
    await push_telemetry(batch)

    # The fleet: one frame, only the newest record of each charge point.
    assert sorted(await receive_records(fleet)) == [("cp-a", 3), ("cp-b", 1), ("cp-c", 1)]
    # Filtered to a site: that site's charge points only, the newest of each.
    assert sorted(await receive_records(one_site)) == [("cp-a", 3), ("cp-b", 1)]
    # A charge point page: every record of its charge point, in order, for its charts.
    assert await receive_records(page_a) == [("cp-a", 1), ("cp-a", 2), ("cp-a", 3)]
    assert await receive_records(page_c) == [("cp-c", 1)]
    # ... and nothing else: one frame per batch.
    for communicator in (fleet, one_site, page_a, page_c):
        assert await communicator.receive_nothing(timeout=0.2)

    # A batch with nothing for a page sends that page nothing (no empty frames).
    await push_telemetry([offline_record("cp-b", 2)])
    for communicator in (fleet, one_site):
        assert await receive_records(communicator) == [("cp-b", 2)]
    assert await page_a.receive_nothing(timeout=0.2) and await page_c.receive_nothing(timeout=0.2)
    for communicator in (fleet, one_site, page_a, page_c):
        await communicator.disconnect()
    await sync_to_async(connections.close_all)()


async def test_fleet_filtered_to_a_site_gets_its_snapshot_and_an_unknown_site_is_refused(site, generic_profile) -> None:
    other = await Site.objects.acreate(slug="other-site", name="Other site")
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    await sync_to_async(make_charge_point)(other, generic_profile, "cp-c", 1503)
    await sync_to_async(save_latest)([offline_record("cp-a"), offline_record("cp-c", site="other-site")])
    headers = await logged_in_headers()

    communicator = WebsocketCommunicator(application, "/ws/fleet/?site=other-site", headers=headers)
    assert (await communicator.connect(timeout=CONNECT_TIMEOUT_S))[0]
    snapshot = await communicator.receive_json_from()
    assert [r["charge_point"] for r in snapshot["records"]] == ["cp-c"]
    await communicator.disconnect()

    unknown = WebsocketCommunicator(application, "/ws/fleet/?site=nope", headers=headers)
    assert await close_code_after_accept(unknown) == CLOSE_NOT_FOUND
    await unknown.wait()


def sized_record(slug: str, site_slug: str) -> dict:
    """A record of a realistic size (~700 bytes): values and a few identity registers."""
    record = offline_record(slug, site=site_slug)
    record["values"] = {role: 1234.5 for role in record["values"]}
    record["extra"] = {"serial": f"SN-{slug}-0123456789", "firmware": "v5.12.3-build.2291", "vendor": "ABB"}
    return record


async def test_a_snapshot_of_6000_charge_points_comes_in_frames_under_1_mib(site, generic_profile) -> None:
    count = 6000

    def populate() -> list[dict]:
        ChargePoint.objects.bulk_create(
            ChargePoint(
                slug=f"cp-{n:05d}", name=f"CP-{n:05d}", site=site, profile=generic_profile, host="127.0.0.1", port=n + 1
            )
            for n in range(count)
        )
        records = [sized_record(f"cp-{n:05d}", site.slug) for n in range(count)]
        save_latest(records)
        return records

    records = await sync_to_async(populate)()
    assert len(orjson.dumps(records)) > 3 * DAPHNE_MESSAGE_MAX_BYTES  # one frame would be refused
    communicator = WebsocketCommunicator(application, "/ws/fleet/", headers=await logged_in_headers())
    assert (await communicator.connect(timeout=CONNECT_TIMEOUT_S))[0]
    received, frames = [], []
    while not frames or frames[-1]["more"]:
        output = await communicator.receive_output(timeout=10)
        assert len(output["text"].encode()) < DAPHNE_MESSAGE_MAX_BYTES
        frames.append(orjson.loads(output["text"]))
        assert set(frames[-1]) == {"type", "records", "more"} and frames[-1]["type"] == "snapshot"
        received += frames[-1]["records"]
    assert len(frames) > 3
    # Reassembled, the frames hold every charge point's latest record once.
    assert sorted(received, key=lambda r: r["charge_point"]) == records
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


async def test_a_telemetry_frame_over_the_limit_is_split(site, generic_profile) -> None:
    await sync_to_async(make_charge_point)(site, generic_profile, "cp-a", 1502)
    page = await accepted("/ws/chargepoints/cp-a/", await logged_in_headers())
    # 400 records with 4 kB of identity registers each: one frame would be ~1.7 MB.
    batch = [offline_record("cp-a", seq) | {"extra": {"notes": "x" * 4000}} for seq in range(1, 401)]
    await push_telemetry(batch)
    seqs = []
    while len(seqs) < len(batch):
        output = await page.receive_output(timeout=5)
        assert len(output["text"].encode()) < DAPHNE_MESSAGE_MAX_BYTES
        seqs += [r["seq"] for r in orjson.loads(output["text"])["records"]]
    assert seqs == list(range(1, 401))
    await page.disconnect()
