"""runbridge under faults, as real processes: kill -9 mid-stream, Kafka away for 60 s, the MQTT link cut.

Each test publishes steady telemetry to its own Mosquitto and checks, in what reached Kafka, that
no charge point's seq is missing and that the first occurrences are in order. Duplicates are
allowed (at least once) and counted; run with -s for the figures.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from django.conf import settings

from gateway.kafka.embedded import start_broker, stop_broker
from tests.bridge_harness import (
    BridgeProcess,
    TelemetrySource,
    bridge_env,
    decoded,
    first_occurrences_in_order,
    forwarded,
    last_stats,
)
from tests.conftest import free_port
from tests.kafka_read import read_all
from tests.mosquitto import Mosquitto, mosquitto_fixture  # noqa: F401 (the `mosquitto` fixture)
from tests.processes import wait_until, wait_until_async
from tests.tcp_proxy import TcpProxy

KAFKA_OUTAGE_S = 60.0


def assert_complete_and_in_order(records: list[dict], source: TelemetrySource) -> int:
    """Every seq of every charge point, first occurrences in order; returns the number of duplicates."""
    seqs, duplicates = first_occurrences_in_order(records)
    for slug in source.slugs:
        assert seqs.get(slug) == list(range(1, source.last_seq[slug] + 1)), f"{slug}: records lost or out of order"
    return duplicates


async def stream_through(bridge: BridgeProcess, source: TelemetrySource, messages_per_s: float) -> None:
    """Once the bridge has subscribed, publish at a steady rate; return when a second's worth is forwarded."""
    await bridge.logged("connected to MQTT")
    source.start_steady(messages_per_s)
    await wait_until_async(lambda: forwarded(bridge) >= messages_per_s, 30, "records forwarded", bridge)


async def drain_and_stop(bridge: BridgeProcess, source: TelemetrySource) -> str:
    """Stop publishing; once the bridge has forwarded every record, SIGTERM it (it must exit 0). Its output."""
    source.stop_steady()
    await asyncio.to_thread(source.wait_all_acknowledged)
    await wait_until_async(
        lambda: forwarded(bridge) >= source.sent and last_stats(bridge.output())["buffered"] == "0",
        30,
        "everything forwarded",
        bridge,
    )
    code, _ = await asyncio.to_thread(bridge.stop)
    output = bridge.output()
    assert code == 0, output[-3000:]
    return output


def unique_in_kafka(topic: str) -> int:
    return len({(r["charge_point"], r["seq"]) for r in decoded(asyncio.run(read_all(topic)))})


def test_kill_9_mid_stream_loses_nothing(tmp_path: Path, kafka: dict, mosquitto: Mosquitto) -> None:
    """Three kill -9s at 400 messages a second; each restart takes what the broker queued meanwhile."""
    topic = kafka["TELEMETRY_TOPIC"]
    source = TelemetrySource(mosquitto, charge_points=8)
    env = bridge_env(tmp_path, kafka, mosquitto.url("bridge", tls=False))
    bridge = BridgeProcess(env, tmp_path / "runbridge-0.log")
    kills = 3
    try:
        bridge.wait_connected()
        source.start_steady(400)
        for kill in range(1, kills + 1):
            # Let it forward for a while (a different moment each time), then kill it outright.
            bridge.wait_forwarded(400)
            time.sleep(0.37 * kill)
            bridge.kill()  # kill -9
            # The next one takes over the outbox (what was stored and not yet sent) and the session.
            bridge = BridgeProcess(env, tmp_path / f"runbridge-{kill}.log")
            bridge.wait_connected()
        bridge.wait_forwarded(400)
        source.stop_steady()
        source.wait_all_acknowledged()
        wait_until(lambda: unique_in_kafka(topic) >= source.sent, 60, "every record in Kafka", bridge)
        code, _ = bridge.stop()
        assert code == 0, bridge.output()[-3000:]
    finally:
        bridge.kill()
        source.close()

    records = decoded(asyncio.run(read_all(topic)))
    duplicates = assert_complete_and_in_order(records, source)
    assert "Traceback" not in bridge.output()
    print(f"kill -9 x{kills} at 400 msg/s: {source.sent} records, {duplicates} duplicates in Kafka")


@pytest.fixture
async def proxied_kafka(kafka: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TcpProxy]:
    """A Tansu of this test's own that clients reach only through a TcpProxy (it advertises the proxy's port)."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy("127.0.0.1", broker_port, proxy_port)
    await proxy.start()
    tansu = await asyncio.to_thread(
        start_broker, port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "tansu.log"
    )
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{proxy_port}")
    kafka["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{proxy_port}"
    try:
        yield proxy
    finally:
        await proxy.close()
        await asyncio.to_thread(stop_broker, tansu)


@pytest.mark.timeout(300)
async def test_kafka_away_for_60_s_everything_buffered_arrives_in_order(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto, proxied_kafka: TcpProxy
) -> None:
    rate = 500
    topic = kafka["TELEMETRY_TOPIC"]
    source = TelemetrySource(mosquitto, charge_points=10)
    bridge = BridgeProcess(bridge_env(tmp_path, kafka, mosquitto.url("bridge", tls=False)), tmp_path / "runbridge.log")
    try:
        await stream_through(bridge, source, rate)

        await proxied_kafka.cut()
        cut_at = time.monotonic()
        await bridge.logged("kafka unavailable")
        await asyncio.sleep(KAFKA_OUTAGE_S - (time.monotonic() - cut_at))
        buffered_at_restore = int(last_stats(bridge.output())["buffered"])
        await proxied_kafka.restore()
        restored_at = time.time()

        await bridge.logged("Kafka backlog replayed", 90)
        output = await drain_and_stop(bridge, source)
    finally:
        await asyncio.to_thread(bridge.kill)
        source.close()

    duplicates = assert_complete_and_in_order(decoded(await read_all(topic)), source)
    [replayed_line] = [line for line in output.splitlines() if "Kafka backlog replayed" in line]
    # From the restore to the bridge's line (its timestamp, local time to the millisecond).
    logged_at = datetime.strptime(replayed_line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    caught_up_s = logged_at - restored_at
    assert "Traceback" not in output
    print(
        f"Kafka away {KAFKA_OUTAGE_S:.0f} s at {rate} msg/s: {buffered_at_restore} records buffered at restore; "
        f"caught up {caught_up_s:.2f} s after the restore ({buffered_at_restore / caught_up_s:.0f} records/s); "
        f"{duplicates} duplicates\n  bridge: {replayed_line.split(': ', 1)[1]}"
    )
    assert buffered_at_restore >= rate * (KAFKA_OUTAGE_S - 5)


@pytest.fixture
async def proxied_mqtt(mosquitto: Mosquitto) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", mosquitto.port, free_port())
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_the_bridge_reconnects_when_its_mqtt_link_breaks_and_loses_nothing(
    tmp_path: Path, kafka: dict, mosquitto: Mosquitto, proxied_mqtt: TcpProxy
) -> None:
    """The link between bridge and broker is cut for 5 s (publishers still reach the broker)."""
    topic = kafka["TELEMETRY_TOPIC"]
    source = TelemetrySource(mosquitto)
    env = bridge_env(
        tmp_path, kafka, f"mqtt://bridge:{mosquitto.users['bridge'].password}@127.0.0.1:{proxied_mqtt.port}"
    )
    bridge = BridgeProcess(env, tmp_path / "runbridge.log")
    try:
        await stream_through(bridge, source, 200)
        await proxied_mqtt.cut()
        # Noticed on the next keepalive at the latest (a busy CI machine stretches it).
        await bridge.logged("lost the MQTT broker", timeout_s=90)
        await asyncio.sleep(5)
        await proxied_mqtt.restore()
        await bridge.logged("connected to MQTT broker", times=2)  # a reconnect
        output = await drain_and_stop(bridge, source)
    finally:
        await asyncio.to_thread(bridge.kill)
        source.close()

    duplicates = assert_complete_and_in_order(decoded(await read_all(topic)), source)
    assert mosquitto.users["bridge"].password not in output
    print(f"MQTT link cut 5 s at 200 msg/s: {source.sent} records, {duplicates} duplicates")
