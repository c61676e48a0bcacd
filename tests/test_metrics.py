"""The workers' metrics: collectors read against real parts (a poller polling simulated chargers,
a dead port and a hung charger; a consumer on the test broker; a command runner with its journal
and outbox), parsed with prometheus_client's parser; the endpoint's routes, readiness and token."""

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from asgiref.sync import sync_to_async
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.alerts.engine import AlertEngine
from gateway.choices import FailureReason
from gateway.commands.journal import CommandJournal
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.runner import CommandRunner
from gateway.health.checks import CheckResult
from gateway.kafka.config import producer_options
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.topics import ensure_topics, telemetry_topic
from gateway.kafka.transport import KafkaTransport
from gateway.metrics.collectors import WorkerInfo, collectors_for
from gateway.metrics.consumer import ConsumerCollector
from gateway.metrics.families import histogram
from gateway.metrics.histogram import BucketCounts
from gateway.metrics.poller import PollerCollector
from gateway.metrics.server import start_metrics_server
from gateway.modbus.poller import Poller
from gateway.observe import Observed
from gateway.profiles.spec import Heartbeat, RegisterSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher
from gateway.simulator.fleet import SimulatorFleet
from gateway.sinks import SinkGroup
from gateway.telemetry import build_record, encode_record
from tests.conftest import Collected, free_port, make_charge_point, stored_profile, wait_for
from tests.faults import HungCharger

pytestmark = pytest.mark.timeout(60)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
# The generic map plus a register the simulator does not serve (an exception response: "device
# exception"), one that cannot be decoded (a bit without its number: "decode") and a heartbeat.
ODD = replace(
    GENERIC,
    slug="generic-odd",
    registers=(*GENERIC.registers, RegisterSpec("missing", 900), RegisterSpec("broken_bit", 0, data_type="bit")),
    heartbeats=(Heartbeat("max_current", 0.2, value=16),),
)
Samples = dict[tuple[str, frozenset], float]


def samples_of(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client's own parser: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(*collectors: object) -> Samples:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return samples_of(generate_latest(registry).decode())


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def label_names(samples: Samples) -> set[str]:
    return {name for _sample, labels in samples for name, _value in labels}


def test_bucket_counts_are_inclusive_and_parse_as_a_cumulative_histogram() -> None:
    counts = BucketCounts((0.01, 0.1, 1.0))
    for observed in (0.01, 0.011, 0.5, 1.0, 30.0):  # on a bound counts in that bucket (le)
        counts.observe(observed)
    samples = scrape(WrapFamily(histogram("evdash_test_seconds", "A test.", [((), counts)])))
    buckets = {le: value(samples, "evdash_test_seconds_bucket", le=le) for le in ("0.01", "0.1", "1.0", "+Inf")}
    assert buckets == {"0.01": 1, "0.1": 2, "1.0": 4, "+Inf": 5}
    assert value(samples, "evdash_test_seconds_count") == 5 == counts.count
    assert value(samples, "evdash_test_seconds_sum") == pytest.approx(31.521)
    with pytest.raises(ValueError, match="increase"):
        BucketCounts((1.0, 0.5))


class WrapFamily:
    """A collector yielding one ready family."""

    def __init__(self, family: object) -> None:
        self.family = family

    def collect(self) -> Iterator[object]:
        yield self.family


@pytest.mark.django_db(transaction=True)
async def test_poller_metrics_count_polls_failures_by_reason_durations_and_connections(
    site, generic_profile, settings
) -> None:
    settings.EVDASH = settings.EVDASH | {
        "MODBUS_TIMEOUT_S": 0.5,
        "RELOAD_INTERVAL_S": 0.5,
        "RECONNECT_BACKOFF_MAX_S": 1.0,
        "METRICS_CHARGE_POINT_LABELS": False,
    }
    odd = await sync_to_async(stored_profile)(ODD)
    async with HungCharger() as hung, SimulatorFleet(GENERIC, 2, base_port=0, seed=3) as fleet:
        live, odd_sim = fleet.charge_points
        await sync_to_async(make_charge_point)(site, generic_profile, "live", live.port, poll_interval_ms=200)
        await sync_to_async(make_charge_point)(site, odd, "odd", odd_sim.port, poll_interval_ms=200)
        await sync_to_async(make_charge_point)(site, generic_profile, "dead", free_port(), poll_interval_ms=200)
        await sync_to_async(make_charge_point)(site, generic_profile, "hung", hung.port, poll_interval_ms=200)
        collected = Collected()
        poller, stop = Poller(collected), asyncio.Event()
        default = PollerCollector(poller)  # labels as the setting says: off
        labelled = PollerCollector(poller, charge_point_labels=True)
        task = asyncio.create_task(poller.run(stop))
        try:
            await wait_for(lambda: collected.of("hung"), timeout_s=5, what="the hung read timing out")
            await wait_for(lambda: len(collected.of("live")) >= 3, timeout_s=5, what="three live polls")
            await wait_for(lambda: poller.stats.heartbeats >= 1, timeout_s=5, what="a heartbeat")
            first = scrape(default)
            await wait_for(lambda: poller.stats.polls > value(first, "evdash_polls_total"), 5, "another poll")
            # The poller keeps polling while it is scraped: read its counters and the scrape in one turn.
            samples, published = scrape(default), len(collected.records)
            with_labels = scrape(labelled)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    polls = value(samples, "evdash_polls_total")
    assert polls > value(first, "evdash_polls_total") > 0
    assert value(samples, "evdash_records_published_total") == published == polls
    failures = {reason: value(samples, "evdash_poll_failures_total", reason=reason) for reason in FAILURE_REASONS}
    assert all(count >= 1 for count in failures.values()), failures
    assert failures["device_exception"] == failures["decode"] <= len(collected.of("odd"))
    assert value(samples, "evdash_poll_duration_seconds_count") == polls
    assert value(samples, "evdash_poll_duration_seconds_bucket", le="+Inf") == polls
    assert value(samples, "evdash_poll_duration_seconds_sum") > 0
    # The hung charger's poll lasted its timeout: in the buckets above 0.25 s, unlike the live ones.
    assert value(samples, "evdash_poll_duration_seconds_bucket", le="0.25") < polls
    assert value(samples, "evdash_poll_lateness_seconds_count") == polls
    assert value(samples, "evdash_charge_points") == 4
    assert value(samples, "evdash_charge_points_connected") in (2, 3)  # live, odd; hung between timeouts
    assert value(samples, "evdash_heartbeat_writes_total") >= 1
    assert "charge_point" not in label_names(samples)

    assert value(with_labels, "evdash_charge_point_connected", site=site.slug, charge_point="live") == 1
    assert value(with_labels, "evdash_charge_point_connected", site=site.slug, charge_point="dead") == 0
    assert value(with_labels, "evdash_charge_point_consecutive_failures", site=site.slug, charge_point="dead") >= 1
    assert value(with_labels, "evdash_charge_point_last_poll_duration_seconds", site=site.slug, charge_point="live") > 0


FAILURE_REASONS = ("connection", "timeout", "device_exception", "decode")


def command(charge_point: str = "cp-1") -> CommandMessage:
    now = datetime.now(UTC)
    return CommandMessage(
        id=str(uuid.uuid4()),
        charge_point=charge_point,
        site="depot",
        action="set_current_limit",
        value=10.0,
        user="operator",
        created_at=now,
        expires_at=now + timedelta(seconds=30),
    )


class OnePoller:
    """What CommandRunner asks of a poller (tests/test_command_runner.py runs the real one)."""

    tasks = {"cp-1": None}

    def submit_command(self, _command: CommandMessage) -> bool:
        return True


def test_commands_by_result_and_the_outbox_depth_and_age(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    publisher = OutboxPublisher(outbox, KafkaTransport("never-started"))  # not started: results stay in the outbox
    journal = CommandJournal(tmp_path / "commands.sqlite3")
    try:
        runner = CommandRunner(OnePoller(), publisher, journal, poller_id="p1", result_topic=lambda *_: "results")
        collector = PollerCollector(Poller(lambda _record: None), publisher, runner)
        applied, offline = command(), command()
        runner.finish(CommandResult.applied(applied, 10.0, poller="p1"))
        runner.finish(CommandResult.failed(offline, FailureReason.OFFLINE, "offline", poller="p1"))
        runner.finish(CommandResult.failed(applied, FailureReason.TIMEOUT, "again", poller="p1"))  # has one: dropped
        time.sleep(0.05)
        samples = scrape(collector)
    finally:
        journal.close()
        outbox.close()
    assert value(samples, "evdash_commands_total", result="applied", reason="") == 1
    assert value(samples, "evdash_commands_total", result="failed", reason="offline") == 1
    assert ("evdash_commands_total", frozenset({"result": "failed", "reason": "timeout"}.items())) not in samples
    assert value(samples, "evdash_outbox_messages") == 2
    assert value(samples, "evdash_outbox_published_total") == 2
    assert value(samples, "evdash_outbox_delivered_total") == 0
    assert 0.05 <= value(samples, "evdash_outbox_oldest_age_seconds") < 30
    assert value(samples, "evdash_outbox_bytes") > 0


def test_alert_evaluations_count_each_record_once() -> None:
    engine = AlertEngine()
    records = [
        build_record(charge_point=slug, site="depot", profile="generic-ev-charger", seq=1, fields=None)
        for slug in ("cp-1", "cp-2")
    ]
    engine.evaluate(records)
    engine.evaluate(records)  # redelivered: skipped, not judged again
    samples = scrape(ConsumerCollector(alerts=engine))
    assert value(samples, "evdash_alert_evaluations_total") == 2


async def test_consumer_metrics_records_batches_lag_and_dead_letters(kafka: dict) -> None:
    topic = telemetry_topic()
    await ensure_topics([topic])
    producer = AIOKafkaProducer(**producer_options())
    await producer.start()
    try:
        for n in range(1, 11):
            record = build_record(
                charge_point=f"cp-{n % 3}", site="depot", profile="generic-ev-charger", seq=n, fields=None
            )
            await producer.send_and_wait(topic, encode_record(record), key=record["charge_point"].encode())
        await producer.send_and_wait(topic, b"not a record", key=b"cp-1")
    finally:
        await producer.stop()
    taken: list[dict] = []

    async def sink(records: list) -> None:
        taken.extend(records)

    consumer = TelemetryConsumer(topic, auto_offset_reset="earliest", sinks=[sink])
    [collector] = [
        c
        for c in collectors_for(Observed("consumer", "test", {"groups": [SinkGroup("live", consumer)]}))
        if isinstance(c, ConsumerCollector)
    ]
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(
            lambda: consumer.handled == 10 and consumer.dead_lettered == 1, 20, "the records and a dead letter"
        )
        await wait_for(lambda: consumer.caught_up, 10, "the consumer to catch up")
        samples = await asyncio.to_thread(scrape, collector)  # from another thread, as the server does
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert value(samples, "evdash_consumer_records_total", group="live") == 10 == len(taken)
    assert value(samples, "evdash_consumer_dead_lettered_total", group="live") == 1
    assert value(samples, "evdash_consumer_malformed_total", group="live") == 1
    batches = value(samples, "evdash_consumer_batch_duration_seconds_count", group="live")
    assert 1 <= batches <= 10
    assert value(samples, "evdash_consumer_batch_duration_seconds_sum", group="live") > 0
    lags = {labels: v for (name, labels), v in samples.items() if name == "evdash_consumer_lag_messages"}
    assert {dict(labels)["partition"] for labels in lags} == {"0", "1"}  # the test topic's two partitions
    assert set(lags.values()) == {0}
    assert value(samples, "evdash_consumer_caught_up", group="live") == 1


def get(url: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_the_endpoint_serves_metrics_liveness_and_readiness(settings) -> None:
    settings.EVDASH = settings.EVDASH | {"METRICS_TOKEN": "", "METRICS_HOST": "127.0.0.1"}
    checks = [CheckResult("kafka", True, "3 brokers", 1.5)]

    def readiness() -> list[CheckResult]:
        if checks is None:
            raise RuntimeError("probe broke")
        return checks

    server = start_metrics_server(0, collectors=[WorkerInfo("poller", "edge-1")], readiness=readiness)
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body, headers = get(f"{base}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        samples = samples_of(body.decode())
        assert value(samples, "evdash_worker_info", kind="poller", name="edge-1") == 1
        assert value(samples, "process_cpu_seconds_total") >= 0  # the process's own collectors
        assert get(f"{base}/healthz")[:2] == (200, b'{"status": "ok"}')
        status, body, _ = get(f"{base}/readyz")
        assert status == 200
        assert json.loads(body) == {
            "ready": True,
            "checks": [{"name": "kafka", "ok": True, "detail": "3 brokers", "duration_ms": 1.5}],
        }
        checks.append(CheckResult("database", False, "connection refused"))
        status, body, _ = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["ready"] is False
        checks = None
        status, body, _ = get(f"{base}/readyz")
        assert status == 503 and "probe broke" in json.loads(body)["error"]
        assert get(f"{base}/other")[0] == 404
        post = urllib.request.Request(f"{base}/metrics", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=5)
        assert refused.value.code == 405
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


def test_a_token_guards_metrics_but_not_the_probes(settings) -> None:
    settings.EVDASH = settings.EVDASH | {"METRICS_TOKEN": "s3cret-token"}
    server = start_metrics_server(0, collectors=[], readiness=lambda: [])
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body, headers = get(f"{base}/metrics")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert get(f"{base}/metrics", "wrong")[0] == 401
        status, body, _ = get(f"{base}/metrics", "s3cret-token")
        assert status == 200 and b"process_cpu_seconds_total" in body
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 200
    finally:
        server.stop()
