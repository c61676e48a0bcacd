"""runpoller's outbox against real processes: a Kafka outage with a kill -9 in the middle of it, a full outbox.

The issue's 60 s Kafka outage runs at the bridge, where the edge path meets Kafka
(tests/test_bridge_faults.py); the direct path's outage here is shorter, as nothing in the
poller's outbox changes after its retries reach their longest backoff (5 s).

runpoller runs as a subprocess (its own SQLite, EVDASH_OUTBOX_DIR in the test's tmp dir) and
polls simulated chargers in this process; it reaches a Tansu broker of this test's own only
through a TcpProxy, which the test cuts and restores.
"""

import asyncio
import json
import re
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from gateway.kafka.embedded import start_broker, stop_broker
from gateway.kafka.topics import ensure_topics
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import free_port
from tests.kafka_read import read_all
from tests.processes import Service, create_charge_points, process_env, wait_until_async
from tests.tcp_proxy import TcpProxy

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
CHARGE_POINTS = 4  # polled every 250 ms: 16 records a second
OUTAGE_S = 25.0
KILL_AFTER_S = 10.0  # into the outage, the first poller is killed (kill -9) and a second one started
POLLER_ID = "outage-test"
POLLER_STOPPED = re.compile(r"poller stopped: (\d+) records published, (\d+) records sent, (\d+) dropped, (\d+) unsent")
OUTBOX_LINE = re.compile(r"poller outbox: buffered=(\d+) .* dropped=(\d+)")
POLLER_STATS = re.compile(r"poller stats: charge_points=\d+ records=(\d+)")


@pytest.fixture
def chargers() -> Iterator[SimulatorFleet]:
    with SimulatorFleet(GENERIC, CHARGE_POINTS, base_port=0, seed=5).run_in_thread() as fleet:
        yield fleet


@pytest.fixture
async def proxy(kafka: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[TcpProxy]:
    """A Tansu broker of this test's own, advertised on (and reachable only through) a TcpProxy."""
    broker_port, proxy_port = free_port(), free_port()
    tcp_proxy = TcpProxy("127.0.0.1", broker_port, proxy_port)
    await tcp_proxy.start()
    broker = await asyncio.to_thread(
        start_broker, port=broker_port, advertised_port=proxy_port, log_path=tmp_path / "tansu.log"
    )
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{proxy_port}")
    await ensure_topics([kafka["TELEMETRY_TOPIC"]])
    try:
        yield tcp_proxy
    finally:
        await tcp_proxy.close()
        await asyncio.to_thread(stop_broker, broker)


@pytest.fixture
def poller_env(tmp_path: Path, kafka: dict, proxy: TcpProxy, chargers: SimulatorFleet) -> dict[str, str]:
    """runpoller's environment: own database with the charge points, the proxied broker, the outbox dir."""
    env = process_env(
        tmp_path,
        EVDASH_POLLER_ID=POLLER_ID,
        EVDASH_POLLER_STATS_INTERVAL_S="1",
        KAFKA_BOOTSTRAP_SERVERS=settings.EVDASH["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        EVDASH_MODBUS_TIMEOUT_S="1",
    )
    create_charge_points(env, [sim.port for sim in chargers.charge_points])
    return env


def last_outbox_line(service: Service) -> tuple[int, int] | None:
    """(buffered, dropped) of the poller's latest outbox line."""
    lines = OUTBOX_LINE.findall(service.output())
    return tuple(map(int, lines[-1])) if lines else None


def outbox_contents(path: Path) -> list[dict]:
    """The records a (dead) poller left in its outbox file, oldest first."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [json.loads(value) for (value,) in db.execute("SELECT value FROM outbox ORDER BY id")]


def first_occurrences(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    return [seq for seq in seqs if not (seq in seen or seen.add(seq))]


async def stop_poller(poller: Service) -> tuple[int, int, int, int]:
    code, _seconds = await asyncio.to_thread(poller.stop, signal.SIGTERM)
    output = poller.output()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    [stopped] = [tuple(map(int, m)) for m in POLLER_STOPPED.findall(output)]
    return stopped


async def test_a_kafka_outage_with_a_poller_kill_9_in_the_middle_loses_nothing(
    poller_env: dict[str, str], proxy: TcpProxy, kafka: dict, tmp_path: Path
) -> None:
    topic = kafka["TELEMETRY_TOPIC"]
    first = Service("runpoller", poller_env, tmp_path / "runpoller-1.log")
    second: Service | None = None
    try:
        await wait_until_async(
            lambda: (last_outbox_line(first) or (0, 0))[0] == 0 and "connected to Kafka" in first.output(),
            60,
            "the first poller delivering",
            first,
        )
        await asyncio.sleep(1)  # a few rounds delivered before the cut
        await proxy.cut()
        outage_started = time.monotonic()
        await asyncio.sleep(KILL_AFTER_S)
        await asyncio.to_thread(first.kill)  # kill -9
        killed_at = time.time()
        left_behind = outbox_contents(tmp_path / "outbox" / f"poller-{POLLER_ID}.sqlite3")
        assert len(left_behind) >= KILL_AFTER_S * CHARGE_POINTS * 2, "the outage's records were not in the outbox"

        second = Service("runpoller", poller_env, tmp_path / "runpoller-2.log")
        await wait_until_async(lambda: last_outbox_line(second) is not None, 30, "the second poller running", second)
        assert last_outbox_line(second)[0] >= len(left_behind)  # it took over the outbox, still in the outage
        await asyncio.sleep(max(0.0, outage_started + OUTAGE_S - time.monotonic()))
        await proxy.restore()
        restored, restored_wall_ms = time.monotonic(), time.time() * 1000
        await wait_until_async(lambda: last_outbox_line(second)[0] < 20, 60, "the backlog delivered", second)
        replay_s = time.monotonic() - restored
        published, sent, dropped, unsent = await stop_poller(second)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    # The second poller delivered its own records and everything the first left behind.
    assert (sent, dropped, unsent) == (published + len(left_behind), 0, 0)

    messages = await read_all(topic)
    records = [json.loads(m.value) for m in messages]
    # The backlog: records made before the broker came back, written after (Kafka's timestamp is
    # when the publisher put them in a batch).
    backlog_ms = [
        m.timestamp
        for m, r in zip(messages, records, strict=True)
        if m.timestamp >= restored_wall_ms and r["ts"] < iso(restored_wall_ms / 1000)
    ]
    backlog_span_s = (max(backlog_ms) - min(backlog_ms)) / 1000 if backlog_ms else 0.0
    duplicates = len(records) - len({(r["charge_point"], r["seq"], r["ts"]) for r in records})
    figures = (
        f"{len(left_behind)} records left in the outbox by the kill -9, {published} published by the second poller, "
        f"{len(records)} in Kafka ({duplicates} twice); backlog of {len(backlog_ms)} replayed within "
        f"{replay_s:.1f} s of the broker's return (retry backoff included), written in {backlog_span_s:.2f} s"
    )
    print(f"poller outage: {figures}")
    for number in range(CHARGE_POINTS):
        slug = f"cp-{number}"
        # Each poller numbers a charge point's records from 1; the timestamp tells whose they are.
        before_kill = [r["seq"] for r in records if r["charge_point"] == slug and r["ts"] < iso(killed_at)]
        after_restart = [r["seq"] for r in records if r["charge_point"] == slug and r["ts"] > iso(killed_at)]
        left = [r["seq"] for r in left_behind if r["charge_point"] == slug]
        assert left, f"{slug}: nothing buffered at the kill"
        # Every record of the first poller that was stored arrived, in order (duplicates only of
        # those in flight at the cut): no seq missing between what was buffered and before it.
        assert first_occurrences(before_kill) == list(range(1, max(left) + 1)), f"{slug}: {figures}"
        assert first_occurrences(after_restart) == list(range(1, max(after_restart) + 1)), f"{slug}: {figures}"
        assert len(after_restart) == len(set(after_restart)), f"{slug}: the second poller's records repeated"


def iso(moment_s: float) -> str:
    """A wall-clock time in the records' ts format (sorts like the time)."""
    from datetime import UTC, datetime

    from gateway.telemetry import format_ts

    return format_ts(datetime.fromtimestamp(moment_s, UTC))


async def test_a_full_outbox_drops_the_oldest_warns_once_and_the_poller_keeps_polling(
    poller_env: dict[str, str], proxy: TcpProxy, kafka: dict, tmp_path: Path
) -> None:
    await proxy.cut()  # Kafka is away from the start
    env = poller_env | {"EVDASH_OUTBOX_MAX_BYTES": "20000"}  # about 30 records
    poller = Service("runpoller", env, tmp_path / "runpoller.log")
    try:
        await wait_until_async(lambda: (last_outbox_line(poller) or (0, 0))[1] >= 50, 60, "50 records dropped", poller)
        output = poller.output()
        # Polling goes on while the oldest records are dropped.
        dropping_from = output.index("dropping the oldest records")
        assert any(int(n) > 0 for n in POLLER_STATS.findall(output[dropping_from:])), output[-3000:]
        await proxy.restore()
        await wait_until_async(lambda: "no longer full" in poller.output(), 60, "the end of the episode", poller)
        published, sent, dropped, unsent = await stop_poller(poller)
    finally:
        poller.kill()
    output = poller.output()
    full = [line for line in output.splitlines() if "full (" in line and "dropping the oldest records" in line]
    assert len(full) == 1, full
    assert f"poller-{POLLER_ID}.sqlite3 full (" in full[0]
    assert published == sent + dropped + unsent and dropped >= 50 and unsent == 0, output[-3000:]

    # What reached Kafka is the newest records: per charge point, no gap after the drops.
    records = [json.loads(m.value) for m in await read_all(kafka["TELEMETRY_TOPIC"])]
    # Every record counted as sent is there, none twice. A batch in flight when the limit dropped
    # it is counted as dropped and may still arrive (the outbox cannot unsend it), so Kafka may
    # hold a few more than `sent`: never fewer.
    assert len({(r["charge_point"], r["seq"]) for r in records}) == len(records) >= sent
    for number in range(CHARGE_POINTS):
        seqs = [r["seq"] for r in records if r["charge_point"] == f"cp-{number}"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > 1, seqs
