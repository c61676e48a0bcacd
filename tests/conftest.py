"""Real servers for the tests: the embedded Kafka broker, sessions for WebSocket clients.

Parallel runs (pytest-xdist, `make test` runs `-n`): every worker is a process of its own with its own
Tansu broker (session fixture), free ports, tmp dirs, in-memory SQLite, PostgreSQL test database
(pytest-django's `_gwN` suffix) and Redis database (worker_redis_url below).
"""

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
from django.conf import settings

from gateway.kafka import web_producer
from gateway.kafka.embedded import start_broker, stop_broker
from gateway.models import ChargePoint, DeviceProfile, Site

REDIS_DATABASES = 16  # Redis's default `databases`


def worker_index() -> int:
    """This xdist worker's number (gw0 -> 0), 0 when not running in parallel."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def worker_redis_url(url: str) -> str:
    """The Redis database of this worker: the given one plus the worker's number (redis://h:p/0 -> /1
    on gw1), so that two workers' channel layer groups ("fleet", site groups) never meet."""
    base, _, database = url.rpartition("/")
    if not base.startswith("redis") or not database.isdigit():
        return url
    return f"{base}/{(int(database) + worker_index()) % REDIS_DATABASES}"


if settings.REDIS_URL and worker_index():
    # Before any channel layer exists; os.environ for the services the tests start as processes.
    os.environ["REDIS_URL"] = settings.REDIS_URL = worker_redis_url(settings.REDIS_URL)
    for layer in settings.CHANNEL_LAYERS.values():
        for host in layer.get("CONFIG", {}).get("hosts", []):
            if isinstance(host, dict) and "address" in host:
                host["address"] = settings.REDIS_URL


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A test socket's handshake runs the consumer's connect (session, snapshot queries): channels'
# default of 1 s is too short on a loaded machine (CI: 4 workers on 2 cores).
CONNECT_TIMEOUT_S = 10.0


async def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll a condition until it holds or the deadline passes (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def within(awaitable: Awaitable, timeout_s: float = 20.0):
    return await asyncio.wait_for(awaitable, timeout_s)


@pytest.fixture(autouse=True)
def outbox_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test's outboxes in a directory of its own: nothing left over from another test or
    run is replayed, and parallel sessions never meet each other's outbox lock."""
    directory = str(tmp_path_factory.mktemp("outbox"))
    monkeypatch.setitem(settings.EVDASH, "OUTBOX_DIR", directory)
    return directory


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker (Kafka protocol, in-memory storage) for the whole test session."""
    port = free_port()
    broker = start_broker(port=port, log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_broker(broker)


@pytest.fixture
def kafka(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point the product at the test broker, with a topic and consumer group of this test's own."""
    suffix = uuid.uuid4().hex[:8]
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "KAFKA_ENABLE_IDEMPOTENCE": False,
        "TELEMETRY_TOPIC": f"test.telemetry.{suffix}",
        "COMMANDS_TOPIC": f"test.commands.{suffix}",
        "COMMAND_RESULTS_TOPIC": f"test.command-results.{suffix}",
        "ALERTS_TOPIC": f"test.alerts.{suffix}",
        "SITE_STATUS_TOPIC": f"test.site-status.{suffix}",
        "CONSUMER_GROUP": f"test-consumer-{suffix}",
        "TOPIC_PARTITIONS": 2,
        "RELOAD_INTERVAL_S": 0.5,
        "MODBUS_TIMEOUT_S": 1.0,
        "RECONNECT_BACKOFF_MAX_S": 2.0,
    }
    for key, value in values.items():
        monkeypatch.setitem(settings.EVDASH, key, value)
    yield values
    # The web process's producer outlives a request (and so a test): none is left connected to a
    # broker the test stopped, logging its reconnects into the next test.
    web_producer.close()


@pytest.fixture
def generic_profile(db: None) -> DeviceProfile:
    """The shipped generic profile (reloaded: transactional tests flush the data migration's rows)."""
    return shipped_profile("generic-ev-charger")


def shipped_profile(slug: str) -> DeviceProfile:
    from gateway.models import Register, StatusRule
    from gateway.profiles.store import SHIPPED_DIR, read_spec_file, save_spec

    return save_spec(read_spec_file(SHIPPED_DIR / f"{slug}.json"), DeviceProfile, Register, StatusRule)


def stored_profile(spec: object) -> DeviceProfile:
    """Store a profile spec as it stands (unvalidated), as an old import or a direct database edit could have."""
    from gateway.models import Register, StatusRule
    from gateway.profiles.store import save_spec

    return save_spec(spec, DeviceProfile, Register, StatusRule)


@pytest.fixture
def site(db: None) -> Site:
    return Site.objects.create(slug="test-site", name="Test site")


def make_charge_point(site: Site, profile: DeviceProfile, slug: str, port: int, **extra: object) -> ChargePoint:
    fields = {"name": slug.upper(), "host": "127.0.0.1", "unit_id": 1, "poll_interval_ms": 250} | extra
    return ChargePoint.objects.create(slug=slug, site=site, profile=profile, port=port, **fields)


def session_cookie_headers(user: object) -> list[tuple[bytes, bytes]]:
    """Headers of a logged-in browser on 127.0.0.1: session cookie, Host and Origin."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [
        (b"cookie", cookie.encode()),
        (b"host", b"127.0.0.1"),
        (b"origin", b"http://127.0.0.1"),
    ]


class Collected:
    """A publish callback for the poller that keeps every record (schema-checked) and when it arrived."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.arrived_at: list[float] = []  # time.monotonic() of each record

    def __call__(self, record: dict) -> None:
        from gateway.telemetry import decode_record, encode_record

        self.records.append(decode_record(encode_record(record)))
        self.arrived_at.append(time.monotonic())

    def of(self, slug: str) -> list[dict]:
        return [r for r in self.records if r["charge_point"] == slug]

    def times_of(self, slug: str) -> list[float]:
        """Arrival times of one charge point's records."""
        return [t for r, t in zip(self.records, self.arrived_at, strict=True) if r["charge_point"] == slug]


# Files that take half a minute or more on CI (`--durations`), longest first. xdist's
# `--dist loadfile` hands files to the workers in collection order, and these sort late
# (test_s*): run last, they left one worker finishing them alone for minutes. Started first, the
# short files fill in around them. The site-control chains, which time the site's response, are
# spread apart rather than started together.
LONG_FILES = (
    "test_commands_end_to_end.py",
    "test_sitecontrol_end_to_end.py",
    "test_bridge_faults.py",
    "test_demo.py",
    "test_sitecontrol_failsafe_end_to_end.py",
    "test_poller_outage.py",
    "test_browser_history.py",
    "test_mqtt_outage.py",
    "test_sitecontrol_load_step.py",
    "test_browser.py",
    "test_bridge_commands.py",
    "test_browser_alerts.py",
    "test_sitecontrol_demand_end_to_end.py",
    "test_browser_alerts_live.py",
    "test_history_sessions_alerts_end_to_end.py",
    "test_bridge.py",
    "test_shutdown.py",
    "test_browser_commands.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
