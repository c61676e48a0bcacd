"""Each worker's --metrics-port while the edge chain runs, as real processes: simulated chargers ->
runpoller --output mqtt -> Mosquitto -> runbridge -> Kafka (the session's Tansu) -> runconsumer.

Every /metrics is scraped twice (with the bearer token the three share) and parsed with
prometheus_client's parser: the counters of each stage move between the scrapes, the gauges say
what runs, and /healthz and /readyz answer on the same port.
"""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from tests.bridge_harness import bridge_env
from tests.conftest import free_port
from tests.mosquitto import Mosquitto, mosquitto_fixture  # noqa: F401 (the `mosquitto` fixture)
from tests.processes import Service, create_charge_points, process_env, wait_until

pytestmark = pytest.mark.timeout(180)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
TOKEN = "metrics-Secr3t"
REDIS_DB = 13  # a database of its own: nothing else listens to the groups this consumer pushes to
Samples = dict[tuple[str, frozenset], float]


@pytest.fixture
def chargers() -> Iterator[SimulatorFleet]:
    with SimulatorFleet(GENERIC, 2, base_port=0, seed=13).run_in_thread() as fleet:
        yield fleet


class Worker(Service):
    """A worker with --metrics-port on a free port."""

    def __init__(self, command: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.port = free_port()
        super().__init__(command, env, log, *args, "--metrics-port", str(self.port))

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def scrape(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, body
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }

    def serving(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


# What must move between two scrapes of each worker: (metric, labels).
MOVING = {
    "runpoller": [
        ("evdash_polls_total", {}),
        ("evdash_records_published_total", {}),
        ("evdash_poll_duration_seconds_count", {}),
        ("evdash_poll_lateness_seconds_count", {}),
        ("evdash_outbox_delivered_total", {}),
    ],
    "runbridge": [
        ("evdash_bridge_records_in_total", {"kind": "telemetry"}),
        ("evdash_bridge_records_out_total", {}),
        ("evdash_outbox_delivered_total", {}),
    ],
    "runconsumer": [
        ("evdash_consumer_records_total", {"group": "live"}),
        ("evdash_consumer_records_total", {"group": "history"}),
        ("evdash_consumer_batch_duration_seconds_count", {"group": "live"}),
        ("evdash_alert_evaluations_total", {}),
    ],
}


def test_each_worker_serves_metrics_that_move_while_the_chain_runs(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto, chargers: SimulatorFleet
) -> None:
    shared = {"EVDASH_METRICS_TOKEN": TOKEN, "EVDASH_POLLER_ID": "edge-metrics", "EVDASH_MODBUS_TIMEOUT_S": "1"}
    env = bridge_env(tmp_path, kafka, mosquitto.url("bridge", tls=False), **shared)
    poller_env = env | {"EVDASH_MQTT_URL": mosquitto.url("poller", tls=False)}
    consumer_env = process_env(
        tmp_path,
        **shared,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_CONSUMER_GROUP=kafka["CONSUMER_GROUP"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        REDIS_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
    )
    create_charge_points(env, [sim.port for sim in chargers.charge_points], poll_interval_ms=250)
    workers = {
        "runconsumer": Worker("runconsumer", consumer_env, tmp_path / "runconsumer.log"),
        "runbridge": Worker("runbridge", env, tmp_path / "runbridge.log"),
        "runpoller": Worker("runpoller", poller_env, tmp_path / "runpoller.log", "--output", "mqtt"),
    }
    everyone = tuple(workers.values())
    try:
        for worker in everyone:
            wait_until(worker.serving, 30, f"{worker.log.stem} to serve /healthz", *everyone)

        def moved(since: dict[str, Samples]) -> bool:
            return all(
                value(worker.scrape(), metric, **labels) > value(since[name], metric, **labels)
                for name, worker in workers.items()
                for metric, labels in MOVING[name]
            )

        zero: dict[str, Samples] = {name: {} for name in workers}
        wait_until(lambda: moved(zero), 90, "every stage's counters to start", *everyone)
        first = {name: worker.scrape() for name, worker in workers.items()}
        wait_until(lambda: moved(first), 30, "every stage's counters to move again", *everyone)
        second = {name: worker.scrape() for name, worker in workers.items()}
        for name, worker in workers.items():
            wait_until(lambda worker=worker: worker.get("/readyz")[0] == 200, 30, f"{name} ready", *everyone)
            status, body = worker.get("/readyz", token=None)  # the probes need no token
            assert status == 200 and json.loads(body)["ready"] is True, body
            assert worker.get("/metrics", token=None)[0] == 401
            assert worker.get("/metrics", token="wrong")[0] == 401
            assert "Traceback" not in worker.output(), worker.output()[-3000:]
    finally:
        for worker in everyone:
            worker.kill()

    for name, samples in second.items():
        for metric, labels in MOVING[name]:
            assert value(samples, metric, **labels) > value(first[name], metric, **labels), (name, metric)
        [info] = [dict(labels) for metric, labels in samples if metric == "evdash_worker_info"]
        assert info["kind"] == name.removeprefix("run"), info
        assert value(samples, "process_resident_memory_bytes") > 0
    poller = second["runpoller"]
    assert value(poller, "evdash_charge_points") == 2 == value(poller, "evdash_charge_points_connected")
    assert value(poller, "evdash_poll_failures_total", reason="connection") == 0
    assert value(poller, "evdash_polls_total") == value(poller, "evdash_poll_duration_seconds_count")
    assert ("evdash_worker_info", frozenset({"kind": "poller", "name": "edge-metrics"}.items())) in poller
    lags = [labels for metric, labels in second["runconsumer"] if metric == "evdash_consumer_lag_messages"]
    assert {dict(labels)["group"] for labels in lags} >= {"live", "history"}
    assert value(second["runbridge"], "evdash_bridge_malformed_messages_total") == 0
