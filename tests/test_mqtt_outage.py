"""The issue's fault test: the MQTT broker down for 30 s, then back. runpoller --output mqtt (a real
process) keeps polling, buffers in its outbox and replays: no seq missing per charge point, the first
occurrence of each record in order (duplicates only of what was in flight when the broker went).

The broker keeps its sessions across the restart (persistence on, as a production broker is
configured): the subscriber's persistent session (clean_session=False) queues the replay even
if it arrives before the subscriber is back.
"""

import asyncio
import re
import signal
import time
from pathlib import Path

import aiomqtt
import pytest

from gateway.simulator.fleet import SimulatorFleet
from gateway.telemetry import decode_record
from tests.mosquitto import Mosquitto
from tests.processes import wait_until_async
from tests.test_mqtt_poller import (
    POLLER_PASSWORD,
    Poller,
    chargers_fixture,  # noqa: F401 (the `chargers` fixture)
    poller_env,
)

OUTAGE_S = 30
pytestmark = pytest.mark.timeout(180)


async def collect_across_restarts(broker: Mosquitto, records: list[dict], stop: asyncio.Event) -> None:
    """A subscriber with a persistent session that reconnects while the broker is down."""
    options = broker.client_options("watcher") | {"identifier": "outage-watcher", "clean_session": False}
    while not stop.is_set():
        try:
            async with aiomqtt.Client(**options) as client:
                await client.subscribe("evdash/+/+/telemetry", qos=1)
                async for message in client.messages:
                    records.append(decode_record(message.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


def check_order(records: list[dict], charge_point: str) -> tuple[int, int]:
    """(records, duplicates) of one charge point; fails on a missing seq or first occurrences out of order."""
    seqs = [r["seq"] for r in records if r["charge_point"] == charge_point]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(1, len(first_seen) + 1)), f"{charge_point}: a seq missing or out of order"
    return len(first_seen), len(seqs) - len(first_seen)


async def test_broker_down_30_s_the_poller_buffers_and_replays(tmp_path: Path, chargers: SimulatorFleet) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", persistence=True)
    broker.start()
    env = poller_env(tmp_path, broker, [cp.port for cp in chargers.charge_points])
    records: list[dict] = []
    stop = asyncio.Event()
    collector = asyncio.create_task(collect_across_restarts(broker, records, stop))
    poller = Poller(env, tmp_path / "runpoller.log")
    try:
        await wait_until_async(lambda: len(records) >= 10, 60, "telemetry before the outage", poller)
        broker.stop()
        outage_started = time.time()
        before = len(records)
        await asyncio.sleep(OUTAGE_S)
        buffered_lines = re.findall(r"poller outbox: buffered=(\d+)", poller.output())
        broker.start()
        outage_s = time.time() - outage_started
        assert poller.process.poll() is None, poller.output()[-3000:]
        # Everything polled up to now reaches the subscriber: at 4 polls/s per charge point, > 200 in the outage.
        expected = before + int(OUTAGE_S * 2 * 1000 / 250 * 0.8)
        replay_started = time.monotonic()
        await wait_until_async(lambda: len(records) >= expected, 60, f"{expected} records after the outage", poller)
        replay_s = time.monotonic() - replay_started
        assert poller.stop(signal.SIGTERM)[0] == 0
        await asyncio.sleep(1)  # the last records on their way to the subscriber
    finally:
        poller.kill()
        stop.set()
        broker.stop()
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)

    output = poller.output()
    assert "mqtt unavailable" in output, output[-3000:]
    assert max(map(int, buffered_lines or ["0"])) > 0, "the outbox never buffered during the outage"
    [(published, sent, dropped, unsent)] = [
        tuple(map(int, m))
        for m in re.findall(
            r"poller stopped: (\d+) records published, (\d+) records sent, (\d+) dropped, (\d+) unsent", output
        )
    ]
    assert (dropped, unsent) == (0, 0)
    during = [r for r in records if outage_started + 1 < _epoch(r["ts"]) < outage_started + outage_s - 1]
    assert len(during) >= OUTAGE_S * 2 * 2, "too few records from inside the outage"
    counts = {slug: check_order(records, slug) for slug in ("cp-0", "cp-1")}
    assert sum(n for n, _ in counts.values()) == published
    assert POLLER_PASSWORD not in output
    print(
        f"outage {outage_s:.0f} s: {len(during)} records polled during it, replayed in {replay_s:.1f} s; "
        f"(records, duplicates) per charge point {counts}; sent {sent}"
    )


def _epoch(ts: str) -> float:
    from gateway.telemetry import parse_ts

    return parse_ts(ts).timestamp()
