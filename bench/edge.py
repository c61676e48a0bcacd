"""The edge path: the poller's CPU per record by output, the bridge's, and the delay MQTT adds.

Two layouts on the same simulated fleet (generic profile, 1 s polls), on a scratch SQLite:
- direct: `runpoller --output kafka` → Tansu;
- edge: `runpoller --output mqtt` → Mosquitto (our own, plain listener on loopback) →
  `runbridge` → Tansu.

The poller runs pinned to core 0, everything else on core 1, as in bench/poller.py. Each row:
- poller µs/record: the poller's utime+stime over the window / records it published (its stats lines);
- bridge µs/record: the bridge's CPU over the window / records that reached Kafka (end offsets);
- delay p50/p99: a reader in this process tails the telemetry topic; delay = wall clock when the
  record is read from Kafka − the record's `ts` (poll completed). `extra` in the edge rows is the
  edge path's delay minus the direct path's at the same size: what MQTT and the bridge add.

The CPU rows run without the tail reader (it would share core 1 with the bridge); the delay rows run at a
size the reader keeps up with.

    .venv/bin/python bench/edge.py [--quick] [--sizes 2000,5000] [--delay-size 1000] [--runs 3]
"""

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

try:
    from bench import common, poller
except ModuleNotFoundError:  # run as `python bench/edge.py`
    import common  # type: ignore[no-redef]
    import poller  # type: ignore[no-redef]

TITLE = "Edge path: poller CPU per record by output, the bridge's CPU per record, the delay MQTT + bridge add"
STATS_INTERVAL_S = 5
BRIDGE_STATS = re.compile(r"bridge stats: received=(\d+) forwarded=(\d+)")


@contextlib.contextmanager
def mosquitto(log_dir: Path) -> Iterator[int]:
    """Our own Mosquitto on a free loopback port: anonymous, plain, nothing persisted.

    max_queued_messages 0: no limit on what the broker queues for the bridge's persistent session
    (the default, 1,000, would drop records whenever the bridge falls a second behind at 1,000/s).
    """
    port = common.free_port()
    config = log_dir / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    )
    with (log_dir / "mosquitto.log").open("ab") as log:
        broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        os.sched_setaffinity(broker.pid, {poller.OTHERS_CORE})
        common.wait_until(lambda: common.port_open(port), 15, "mosquitto listening")
        yield port
    finally:
        common.stop_process(broker, timeout_s=5)


class TailReader:
    """Reads the telemetry topic from its end, in a thread of its own: delays (s) and messages read."""

    def __init__(self, bootstrap: str, topic: str = "evdash.telemetry") -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.delays: list[float] = []
        self.measuring = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._read()), daemon=True)

    def __enter__(self) -> "TailReader":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    async def _read(self) -> None:
        import orjson
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=10
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                now = time.time()
                if not self.measuring:
                    continue
                for messages in batches.values():
                    for message in messages:
                        record = orjson.loads(message.value)
                        if record.get("status") == "offline":
                            continue
                        sent = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
                        self.delays.append(now - sent)
        finally:
            with contextlib.suppress(asyncio.CancelledError):  # aiokafka re-raises its fetch task's cancellation
                await consumer.stop()


def kafka_records(bootstrap: str, topic: str = "evdash.telemetry") -> int:
    """Messages in the topic now (sum of end offsets)."""

    async def count() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(count())


def bridge_forwarded(log: Path) -> int:
    """`forwarded` of the bridge's last stats line (counted since it started)."""
    matches = BRIDGE_STATS.findall(log.read_text(errors="replace"))
    return int(matches[-1][1]) if matches else 0


def measure(count: int, layout: str, *, warmup_s: float, window_s: float, tail: bool) -> dict:
    """One layout at one fleet size: start everything, measure a steady window, stop."""
    from gateway.kafka.embedded import start_broker, stop_broker

    with tempfile.TemporaryDirectory(prefix="evdash-bench-edge-") as scratch:
        scratch_dir = Path(scratch)
        kafka_port, base_port = common.free_port(), common.free_port_range(count)
        bootstrap = f"127.0.0.1:{kafka_port}"
        env = common.embedded_env(
            scratch_dir,
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            KAFKA_ENABLE_IDEMPOTENCE="0",
            EVDASH_POLLER_STATS_INTERVAL_S=str(STATS_INTERVAL_S),
            EVDASH_BRIDGE_STATS_INTERVAL_S=str(STATS_INTERVAL_S),
            EVDASH_OUTBOX_DIR=str(scratch_dir / "outbox"),
            EVDASH_LOG_LEVEL="INFO",
        )
        common.run_manage(["migrate", "-v", "0"], env)
        slugs = ("generic-ev-charger",)
        common.run_manage(
            ["shell", "-c", poller.REGISTER_FLEET.format(slugs=slugs, count=count, base_port=base_port)], env
        )
        broker = start_broker(port=kafka_port, log_path=scratch_dir / "tansu.log")
        simulators: list[subprocess.Popen] = []
        children: list[subprocess.Popen] = []
        with contextlib.ExitStack() as stack:
            try:
                os.sched_setaffinity(broker.pid, {poller.OTHERS_CORE})
                simulators += poller.start_simulators(count, base_port, slugs, env, scratch_dir)
                poller.wait_listening(base_port + count - 1, 120)
                bridge_log = scratch_dir / "bridge.log"
                bridge = None
                if layout == "edge":
                    mqtt_port = stack.enter_context(mosquitto(scratch_dir))
                    env["EVDASH_MQTT_URL"] = f"mqtt://127.0.0.1:{mqtt_port}"
                    bridge = common.spawn_manage(["runbridge"], env, bridge_log)
                    os.sched_setaffinity(bridge.pid, {poller.OTHERS_CORE})
                    children.append(bridge)
                output = "mqtt" if layout == "edge" else "kafka"
                log = scratch_dir / "poller.log"
                poll = common.spawn_manage(["runpoller", "--output", output], env, log)
                os.sched_setaffinity(poll.pid, {poller.POLLER_CORE})
                children.append(poll)
                reader = stack.enter_context(TailReader(bootstrap)) if tail else None
                time.sleep(warmup_s)
                seen = len(poller.stats_lines(log))
                in_kafka = kafka_records(bootstrap)
                cpu = common.CpuMeter({"poller": poll.pid} | ({"bridge": bridge.pid} if bridge else {}))
                if reader:
                    reader.measuring = True
                cpu.start()
                time.sleep(window_s)
                used, elapsed = cpu.stop()
                if reader:
                    reader.measuring = False
                reached_kafka = kafka_records(bootstrap) - in_kafka
                lines = poller.stats_lines(log)[seen:]
                for name, child in (("poller", poll), ("bridge", bridge)):
                    if child is not None and child.poll() is not None:
                        raise RuntimeError(f"the {name} exited ({child.returncode}): {common.log_tail(log)}")
            finally:
                for child in reversed(children):  # poller first: it flushes to the bridge or Kafka
                    common.stop_process(child)
                for simulator in simulators:  # each in a process group of its own
                    poller.stop(simulator)
                stop_broker(broker)
        records = sum(line[2] for line in lines)
        polls_per_s = records / (len(lines) * STATS_INTERVAL_S) if lines else float("nan")
        row: dict[str, object] = {
            "layout": layout,
            "charge_points": count,
            "polls_per_s": round(polls_per_s, 1),
            "kafka_records_per_s": round(reached_kafka / elapsed, 1),
            "poller_us_per_record": round(used["poller"] / (polls_per_s * elapsed) * 1e6, 1) if lines else None,
            "bridge_us_per_record": (
                round(used["bridge"] / reached_kafka * 1e6, 1) if "bridge" in used and reached_kafka else None
            ),
            "lateness_p99_ms": sorted(line[4] for line in lines)[len(lines) // 2] if lines else None,
        }
        if reader:
            cuts = common.percentiles([d * 1000 for d in reader.delays])
            row |= {"delay_p50_ms": round(cuts["p50"], 1), "delay_p99_ms": round(cuts["p99"], 1)}
        return row


def run(
    quick: bool, sizes: tuple[int, ...] | None = None, delay_size: int | None = None, runs: int | None = None
) -> list[dict]:
    """CPU rows: each size `runs` times, the layouts taking turns, so that a noisy minute of the
    shared machine falls on both; a row is the median of its runs. Then one delay row per layout."""
    sizes = sizes or ((2000,) if quick else (2000, 5000))
    delay_size = delay_size or (500 if quick else 1000)
    runs = runs or (1 if quick else 3)
    warmup_s, window_s = (10.0, 15.0) if quick else (15.0, 20.0)
    rows = []
    for count in sizes:
        measured: dict[str, list[dict]] = {"direct": [], "edge": []}
        for _ in range(runs):
            for layout in measured:
                measured[layout].append(measure(count, layout, warmup_s=warmup_s, window_s=window_s, tail=False))
        rows += [common.rounded(common.median_rows(results)) | {"runs": runs} for results in measured.values()]
    delays = {
        layout: measure(delay_size, layout, warmup_s=warmup_s, window_s=window_s, tail=True)
        for layout in ("direct", "edge")
    }
    for layout in ("direct", "edge"):
        row = delays[layout]
        if layout == "edge":
            for cut in ("p50", "p99"):
                row[f"extra_{cut}_ms"] = round(row[f"delay_{cut}_ms"] - delays["direct"][f"delay_{cut}_ms"], 1)
        rows.append(row | {"runs": 1})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated fleet sizes for the CPU rows")
    parser.add_argument("--delay-size", type=int, help="fleet size of the delay rows")
    parser.add_argument("--runs", type=int, help="runs of each CPU row (median), default 3 (quick: 1)")
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.sizes.split(",")) if args.sizes else None
    common.print_rows(TITLE, run(args.quick, sizes, args.delay_size, args.runs))


if __name__ == "__main__":
    main()
