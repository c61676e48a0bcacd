"""Health and metrics: /healthz, /readyz and /metrics of the web process, and the workers' readiness.

Readiness is tested against real outages: the web process (daphne, as deployed) reaches PostgreSQL
and a Kafka broker of its own through TCP proxies that the test cuts and restores, and /readyz must
go red for each and green again afterwards.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.health import checks, workers
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.embedded import start_broker, stop_broker
from gateway.kafka.topics import ensure_topics
from gateway.kafka.transport import KafkaTransport
from gateway.observe import Observed
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher
from gateway.sinks import SinkGroup
from gateway.telemetry import build_record
from tests.conftest import free_port
from tests.processes import process_env
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.django_db(transaction=True)

# The machine's PostgreSQL, as `make test` uses it (Makefile, TEST_DATABASE_URL).
POSTGRES = os.environ.get("TEST_POSTGRES_ADDRESS", "127.0.0.1:5432")


def checks_of(body: dict) -> dict[str, bool]:
    return {check["name"]: check["ok"] for check in body["checks"]}


async def readyz(client: AsyncClient) -> tuple[int, dict]:
    response = await client.get("/readyz")
    return response.status_code, response.json()


async def test_healthz_needs_no_login_and_no_dependency(monkeypatch) -> None:
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


async def test_readyz_goes_red_when_kafka_is_unreachable_and_green_again(kafka) -> None:
    client = AsyncClient()
    status, body = await readyz(client)
    assert status == 200, body
    assert body["ready"] is True
    assert checks_of(body) == {"database": True, "channel_layer": True, "kafka": True}
    assert all(check["duration_ms"] < checks.CHECK_TIMEOUT_S * 1000 for check in body["checks"])

    settings.EVDASH["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # nobody listens there
    status, body = await readyz(client)
    assert status == 503
    assert checks_of(body) == {"database": True, "channel_layer": True, "kafka": False}
    kafka_check = next(check for check in body["checks"] if check["name"] == "kafka")
    assert kafka_check["detail"].startswith("unreachable: ") and "127.0.0.1" not in kafka_check["detail"]

    settings.EVDASH["KAFKA_BOOTSTRAP_SERVERS"] = kafka["KAFKA_BOOTSTRAP_SERVERS"]
    status, body = await readyz(client)
    assert status == 200, body


def postgres_available() -> bool:
    host, _, port = POSTGRES.partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """PostgreSQL and a Tansu of this test's own, each reachable only through a TcpProxy."""
    if not postgres_available():
        # Never skipped: make test starts PostgreSQL (scripts/prerequisites test) or stops with one line.
        pytest.fail(f"no PostgreSQL at {POSTGRES}: start it (make test does: scripts/prerequisites test)")
    host, _, port = POSTGRES.partition(":")
    database = TcpProxy(host, int(port), free_port())
    broker_port = free_port()
    kafka = TcpProxy("127.0.0.1", broker_port, free_port())
    await database.start()
    await kafka.start()
    tansu = await asyncio.to_thread(
        start_broker, port=broker_port, advertised_port=kafka.port, log_path=tmp_path / "tansu.log"
    )
    try:
        yield {"database": database, "kafka": kafka}
    finally:
        await database.close()
        await kafka.close()
        await asyncio.to_thread(stop_broker, tansu)


async def wait_for_readyz(url: str, expected: int, service: subprocess.Popen, log: Path, timeout_s: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: tuple[int, dict] | None = None
    while asyncio.get_running_loop().time() < deadline:
        assert service.poll() is None, f"daphne exited:\n{tail(log)}"
        try:
            last = await asyncio.to_thread(get_json, url)
        except (OSError, ValueError):
            last = None  # not listening yet
        if last is not None and last[0] == expected:
            return last[1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz did not answer {expected} within {timeout_s} s (last: {last})")


@pytest.mark.timeout(120)
async def test_the_web_process_readyz_follows_database_and_kafka_outages(tmp_path: Path, proxied) -> None:
    port = free_port()
    env = process_env(tmp_path) | {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{proxied['database'].port}/postgres",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{proxied['kafka'].port}",
        "KAFKA_ENABLE_IDEMPOTENCE": "0",
        "DJANGO_DEBUG": "0",
    }
    log = tmp_path / "daphne.log"
    service = await asyncio.to_thread(start_daphne, port, env, log)
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        body = await wait_for_readyz(url, 200, service, log)
        assert checks_of(body) == {"database": True, "channel_layer": True, "kafka": True}

        await proxied["database"].cut()
        body = await wait_for_readyz(url, 503, service, log)
        assert checks_of(body) == {"database": False, "channel_layer": True, "kafka": True}
        await proxied["database"].restore()
        await wait_for_readyz(url, 200, service, log)

        await proxied["kafka"].cut()
        body = await wait_for_readyz(url, 503, service, log)
        assert checks_of(body) == {"database": True, "channel_layer": True, "kafka": False}
        await proxied["kafka"].restore()
        await wait_for_readyz(url, 200, service, log)
    finally:
        service.terminate()
        try:
            service.wait(15)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(5)
    output = tail(log, 100_000)
    assert "readiness: database failed: unreachable: OperationalError" in output
    assert "readiness: kafka failed: unreachable: " in output
    assert "Traceback" not in output


def start_daphne(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The web process as deployed (README: daphne evdash.asgi:application)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "evdash.asgi:application"],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text()[-chars:]


async def probe_until(probe: Callable[[], Any], *, ready: bool, timeout_s: float) -> Any:
    """Call a worker's probe from a thread (as its metrics server does) until it is (not) ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await asyncio.to_thread(probe)
        results = result if isinstance(result, list) else [result]
        if all(check.ok for check in results) == ready:
            return result
        assert time.monotonic() < deadline, f"not {'ready' if ready else 'red'} within {timeout_s} s: {result}"
        await asyncio.sleep(0.1)


def metric_samples(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


async def test_metrics_needs_the_token_or_a_staff_login(monkeypatch) -> None:
    user_model = get_user_model()
    operator = await user_model.objects.acreate_user("operator", password="pw-1234567")
    admin = await user_model.objects.acreate_user("admin", password="pw-1234567", is_staff=True)
    await AsyncClient().get("/healthz")  # counted by the request metrics

    monkeypatch.setitem(settings.EVDASH, "METRICS_TOKEN", "")
    anonymous = await AsyncClient().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == 'Bearer realm="metrics"'
    client = AsyncClient()
    await client.aforce_login(operator)
    assert (await client.get("/metrics")).status_code == 401
    # No token configured: a bearer token is no way in.
    assert (await AsyncClient().get("/metrics", headers={"Authorization": "Bearer "})).status_code == 401
    staff = AsyncClient()
    await staff.aforce_login(admin)
    response = await staff.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=")
    samples = metric_samples(response.content.decode())
    assert "process_cpu_seconds" in samples
    healthz = [
        s for s in samples["evdash_http_requests"] if s.labels["route"] == "healthz" and s.name.endswith("_total")
    ]
    assert healthz and healthz[0].labels == {"route": "healthz", "method": "GET", "status": "200"}
    assert healthz[0].value >= 1
    assert any(s.labels.get("route") == "healthz" for s in samples["evdash_http_request_duration_seconds"])

    monkeypatch.setitem(settings.EVDASH, "METRICS_TOKEN", "scrape-secret-1")
    assert (await AsyncClient().get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})).status_code == 200
    assert (await AsyncClient().get("/metrics", headers={"Authorization": "Bearer scrape-secret-2"})).status_code == 401
    assert (await AsyncClient().get("/metrics")).status_code == 401
    assert (await staff.get("/metrics")).status_code == 200


async def test_a_consumers_readiness_is_red_until_it_is_connected_and_assigned(kafka) -> None:
    await ensure_topics([kafka["TELEMETRY_TOPIC"]])
    consumer = TelemetryConsumer(kafka["TELEMETRY_TOPIC"], sinks=[])
    observed = Observed("consumer", "test", {"groups": [SinkGroup("live", consumer)], "results": None})
    readiness = workers.readiness_for(observed)
    # Called from another thread, as the metrics server calls it.
    before = {c.name: c.ok for c in await asyncio.to_thread(readiness)}
    assert before == {"database": True, "kafka (live)": False}
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await probe_until(readiness, ready=True, timeout_s=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    after = {c.name: c.ok for c in await asyncio.to_thread(readiness)}
    assert after == {"database": True, "kafka (live)": False}  # stopped: no longer connected


async def test_an_outbox_that_stopped_delivering_is_not_ready(kafka, tmp_path: Path, monkeypatch) -> None:
    await ensure_topics([kafka["TELEMETRY_TOPIC"]])
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    publisher = OutboxPublisher(Outbox(tmp_path / "outbox.sqlite"), KafkaTransport(kafka["TELEMETRY_TOPIC"]))
    watch = workers.OutboxWatch("outbox (kafka)", publisher, stuck_after_s=1.0)
    await publisher.start()
    try:
        assert (await asyncio.to_thread(watch)).ok  # empty
        publisher.publish(build_record(charge_point="cp-1", site="s", profile="p", seq=1, fields=None))
        publisher.persist()
        result = await probe_until(watch, ready=False, timeout_s=10)
        assert result.detail.startswith("1 records waiting, none delivered for ")
        # The broker is back: the record goes, the outbox moves again.
        monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", kafka["KAFKA_BOOTSTRAP_SERVERS"])
        await probe_until(watch, ready=True, timeout_s=20)
        assert publisher.stats.delivered == 1
    finally:
        await publisher.close(flush_timeout_s=1)
        publisher.outbox.close()
