"""What the bridge tests share: a telemetry source publishing to MQTT, runbridge as a real process,
and reading back what reached Kafka."""

import json
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.telemetry import build_record, encode_record
from tests.mosquitto import Mosquitto
from tests.processes import Service, process_env, wait_until, wait_until_async

BRIDGE_STOPPED = "bridge stopped: received="


class TelemetrySource:
    """Publishes telemetry of a few charge points (QoS 1, seq 1, 2, 3, ... each) from a thread.

    A paho client on its own network thread, not aiomqtt: it keeps many publishes in flight, so a
    few thousand messages a second cost the test process little. `published` counts the messages
    the broker acknowledged (PUBACK).
    """

    def __init__(
        self, broker: Mosquitto, *, site: str = "depot", charge_points: int = 4, prefix: str = "evdash"
    ) -> None:
        self.site = site
        self.slugs = [f"cp-{n}" for n in range(1, charge_points + 1)]
        self.prefix = prefix
        self.last_seq = dict.fromkeys(self.slugs, 0)
        self.payloads: dict[tuple[str, int], bytes] = {}  # (charge point, seq) -> the bytes published
        self._acked = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"source-{id(self)}", protocol=paho.MQTTv311)
        self.client.username_pw_set("poller", broker.users["poller"].password)
        self.client.max_inflight_messages_set(1000)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self._acked += 1

    @property
    def published(self) -> int:
        with self._lock:
            return self._acked

    @property
    def sent(self) -> int:
        return sum(self.last_seq.values())

    def topic(self, slug: str) -> str:
        return f"{self.prefix}/{self.site}/{slug}/telemetry"

    def publish_round(self) -> None:
        """One record of each charge point."""
        for slug in self.slugs:
            seq = self.last_seq[slug] + 1
            payload = encode_record(
                build_record(charge_point=slug, site=self.site, profile="generic-ev-charger", seq=seq, fields=None)
            )
            self.payloads[(slug, seq)] = payload
            self.client.publish(self.topic(slug), payload, qos=1)
            self.last_seq[slug] = seq

    def publish_raw(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def start_steady(self, messages_per_s: float) -> None:
        """Publish rounds at a steady rate (in bursts every 10 ms) until stop_steady()."""
        rounds_per_s = messages_per_s / len(self.slugs)

        def run() -> None:
            started = time.monotonic()
            rounds = 0
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * rounds_per_s)
                while rounds < due:
                    self.publish_round()
                    rounds += 1
                self._stop.wait(0.01)

        self._stop.clear()
        self._thread = threading.Thread(target=run, name="telemetry-source", daemon=True)
        self._thread.start()

    def stop_steady(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def wait_all_acknowledged(self, timeout_s: float = 20.0) -> None:
        wait_until(lambda: self.published >= self.sent, timeout_s, "the broker to acknowledge every publish")

    def close(self) -> None:
        self.stop_steady()
        self.client.disconnect()
        self.client.loop_stop()


def bridge_env(tmp_path: Path, kafka: dict, mqtt_url: str, **extra: str) -> dict[str, str]:
    """runbridge's environment: the test's Kafka topic, the test's MQTT broker, an outbox in tmp_path."""
    return process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        EVDASH_MQTT_URL=mqtt_url,
        EVDASH_BRIDGE_CLIENT_ID=f"bridge-{kafka['TELEMETRY_TOPIC']}",
        EVDASH_BRIDGE_STATS_INTERVAL_S="1",
        **extra,
    )


class BridgeProcess(Service):
    """manage.py runbridge as a real process, logging at -v 2."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__("runbridge", env, log, verbosity=2)

    def wait_connected(self, connects: int = 1, timeout_s: float = 30.0) -> None:
        wait_until(
            lambda: self.output().count("connected to MQTT broker") >= connects,
            timeout_s,
            "runbridge to subscribe",
            self,
        )

    def wait_forwarded(self, count: int, timeout_s: float = 30.0) -> None:
        wait_until(lambda: forwarded(self) >= count, timeout_s, f"{count} records forwarded", self)

    async def logged(self, text: str, timeout_s: float = 30.0, *, times: int = 1) -> None:
        """Wait (without blocking the event loop) until the log holds `text` `times` times."""
        await wait_until_async(lambda: self.output().count(text) >= times, timeout_s, repr(text), self)


def first_occurrences_in_order(records: list[dict]) -> tuple[dict[str, list[int]], int]:
    """Per charge point, the seqs as read from Kafka with repeats removed; and how many repeats there were."""
    seqs: dict[str, list[int]] = {}
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    for record in records:
        key = (record["charge_point"], record["seq"])
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        seqs.setdefault(record["charge_point"], []).append(record["seq"])
    return seqs, duplicates


def decoded(messages: list) -> list[dict]:
    return [json.loads(message.value) for message in messages]


def keys_per_charge_point(messages: list) -> Counter:
    return Counter((message.key, json.loads(message.value)["charge_point"].encode()) for message in messages)


def last_stats(output: str) -> dict[str, str]:
    """The figures of the bridge's last stats line (or of its stopped line), as text."""
    lines = [line for line in output.splitlines() if "bridge stats: " in line or BRIDGE_STOPPED in line]
    if not lines:
        return {}
    text = lines[-1].split("bridge stats: ", 1)[-1].split("bridge stopped: ", 1)[-1]
    return dict(pair.split("=", 1) for pair in text.split())


def forwarded(bridge: "BridgeProcess") -> int:
    return int(last_stats(bridge.output()).get("forwarded", 0))
