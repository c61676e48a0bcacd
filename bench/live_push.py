"""Consumer → live push: records/s and CPU µs per record through the real `handle_batch`, Redis layer.

The production layout without Kafka in the way: a feeder process (pinned to CPU 0) runs
`TelemetryConsumer.handle_batch` with the product's default sinks on batches of synthetic but
valid records (encoded as the poller encodes them): decode (orjson + the compiled schema
validator), the latest-state upsert on PostgreSQL (the bench's own database, `evdash_bench` on
127.0.0.1:5432, bench/common.py), then the push through the Redis channel layer (channels_redis).
A real daphne (pinned to CPU 1, with this process) serves logged-in WebSocket listeners: fleet
pages, a fleet page filtered to one site, and charge point pages, so every group_send has real
recipients.

The fleet: 1,000 charge points over 10 sites. Each run hands `records_per_run` records to
handle_batch in batches of 100 or 500 (a round of the fleet is two to ten batches); CPU is the
feeder's own (every thread: the database work runs in asgiref's sync thread), from os.times().
Rows give the median of three runs per batch size, the wall time of each stage, and what the
listeners received against what the push should have delivered. PostgreSQL, Redis and daphne
share CPU 1 with the listeners: the machine is small and shared, so read the CPU per record
before the rate.

    .venv/bin/python bench/live_push.py [--quick]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/live_push.py`
    import common  # type: ignore[no-redef]

TITLE = "Consumer → live push: handle_batch (decode, store latest, alerts, push) with the Redis layer"
# The live group's sinks in gateway/sinks.py, in order.
SINK_STAGES = ("store", "alerts", "push")
BATCH_SIZES = (100, 500)
RUNS = 3
CHARGE_POINTS = 1000
SITES = 10
FEEDER_CPU = 0
OTHERS_CPU = 1
CLIENT_USER = "bench"
FLEET_LISTENERS = 2
# A Redis db of this benchmark's own: another benchmark's consumer pushing to "fleet" (or flushing
# its db) at the same time would otherwise land in these listeners' counts.
REDIS_URL = os.environ.get("BENCH_LIVE_PUSH_REDIS_URL", "redis://127.0.0.1:6379/12")
CHARGE_POINT_LISTENERS = 2

SETUP = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from gateway.models import ChargePoint, DeviceProfile, Site
profile = DeviceProfile.objects.get(slug="generic-ev-charger")
ChargePoint.objects.filter(slug__startswith="lp-").delete()
sites = [
    Site.objects.get_or_create(slug=f"lp-site-{{n}}", defaults={{"name": f"LP site {{n}}"}})[0] for n in range({sites})
]
ChargePoint.objects.bulk_create(
    ChargePoint(slug=f"lp-{{n:05d}}", name=f"LP-{{n:05d}}", site=sites[n % {sites}], profile=profile,
                host="127.0.0.9", port=20000 + n, enabled=True)
    for n in range({count})
)
user = get_user_model().objects.filter(username="{user}").first()
if user is None:
    user = get_user_model().objects.create_superuser("{user}", "bench@localhost", None)
client = Client()
client.force_login(user)
name = settings.SESSION_COOKIE_NAME
print(json.dumps({{"cookie": f"{{name}}={{client.cookies[name].value}}"}}))
"""


@dataclass
class Plan:
    records_per_run: int
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    runs: int = RUNS
    charge_points: int = CHARGE_POINTS
    sites: int = SITES


def plan_for(quick: bool) -> Plan:
    return Plan(records_per_run=6000 if quick else 30000)


def slug_of(n: int) -> str:
    return f"lp-{n:05d}"


def site_of(n: int) -> str:
    return f"lp-site-{n % SITES}"


# --- the feeder (a child process: Django in production mode, pinned) ---------------------------


def feed(plan: Plan, batch_size: int) -> dict:
    """In the child: RUNS runs of plan.records_per_run records through handle_batch; one result per run."""
    os.sched_setaffinity(0, {FEEDER_CPU})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from aiokafka.structs import ConsumerRecord

    from gateway import sinks as sink_groups
    from gateway.kafka import consumer as consumer_module
    from gateway.metrics.collectors import collectors_for
    from gateway.observe import Observed
    from gateway.pipeline.reporter import StatusProbe
    from gateway.profiles.decode import TelemetryFields
    from gateway.telemetry import build_record, encode_record

    start = datetime.now(UTC) - timedelta(hours=1)

    def message(n: int, seq: int, offset: int) -> ConsumerRecord:
        fields = TelemetryFields(
            status="charging",
            iec61851_state="C",
            values={"power_w": 7000.0 + n, "current_l1_a": 16.0, "voltage_l1_v": 230.1, "energy_total_wh": 1e6 + seq},
            extra={"serial": f"SN-{n:06d}", "firmware": "5.12.3"},
        )
        record = build_record(
            charge_point=slug_of(n),
            site=site_of(n),
            profile="generic-ev-charger",
            seq=seq,
            fields=fields,
            poll_ms=12.3,
            moment=start + timedelta(seconds=seq, milliseconds=n % 1000),
        )
        value = encode_record(record)
        return ConsumerRecord("bench", 0, offset, 0, 0, slug_of(n).encode(), value, None, 9, len(value), ())

    # Wall time in each stage; the rest of handle_batch is decoding.
    stage_s = dict.fromkeys(SINK_STAGES, 0.0)

    def timed(name: str, sink):
        async def run_sink(records):
            began = time.perf_counter()
            try:
                return await sink(records)
            finally:
                stage_s[name] += time.perf_counter() - began

        return run_sink

    async def main() -> list[dict]:
        # The live group's sinks (gateway/sinks.py), in their order, each with a timer.
        sinks = sink_groups.live_consumer("bench").sinks
        assert len(sinks) == len(SINK_STAGES), sinks
        consumer = consumer_module.TelemetryConsumer(
            "bench", sinks=[timed(name, sink) for name, sink in zip(SINK_STAGES, sinks, strict=True)]
        )
        # What runconsumer attaches to its consumers (gateway/observe.py): the metrics' batch
        # durations and the pipeline page's latency samples, so their cost is in the figures.
        observed = Observed("consumer", "bench", {"groups": [sink_groups.SinkGroup(sink_groups.LIVE, consumer)]})
        collectors_for(observed)
        StatusProbe(observed).attach()
        seq = 0
        results = []
        fleet_pushed = 0  # records the fleet group got, warm-up included (the listeners count them too)
        for run in range(plan.runs + 1):  # the first run warms up (connections, caches) and is dropped
            messages = []
            while len(messages) < plan.records_per_run:
                seq += 1
                messages += [message(n, seq, len(messages) + n) for n in range(plan.charge_points)]
            messages = messages[: plan.records_per_run]
            batches = [messages[i : i + batch_size] for i in range(0, len(messages), batch_size)]
            fleet_pushed += sum(len({m.key for m in batch}) for batch in batches)
            stage_s.update(dict.fromkeys(SINK_STAGES, 0.0))
            before = os.times()
            began = time.perf_counter()
            for batch in batches:
                await consumer.handle_batch(batch)
            wall_s = time.perf_counter() - began
            after = os.times()
            cpu_s = (after.user - before.user) + (after.system - before.system)
            if run == 0:
                continue
            count = len(messages)
            results.append(
                {
                    "records": count,
                    "records_per_s": count / wall_s,
                    "cpu_us_per_record": cpu_s * 1e6 / count,
                    "decode_us_per_record": (wall_s - sum(stage_s.values())) * 1e6 / count,
                    "store_us_per_record": stage_s["store"] * 1e6 / count,
                    "alerts_us_per_record": stage_s["alerts"] * 1e6 / count,
                    "push_us_per_record": stage_s["push"] * 1e6 / count,
                }
            )
        from django.db import connections

        await asyncio.to_thread(connections.close_all)
        # A batch the sinks refused is retried whole (and pushed again): say so rather than hide it.
        return {"runs": results, "fleet_pushed": fleet_pushed, "handled": consumer.handled}

    return asyncio.run(main())


# --- the listeners (this process) --------------------------------------------------------------


class Listener:
    """One logged-in WebSocket page: counts the telemetry records it receives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records = 0
        self.frames = 0
        self.snapshot_done = False

    def on_frame(self, payload: bytes) -> None:
        import orjson

        message = orjson.loads(payload)
        if message["type"] == "snapshot":
            self.snapshot_done = not message["more"]
        elif message["type"] == "telemetry":
            self.frames += 1
            self.records += len(message["records"])


async def open_listener(port: int, cookie: str, listener: Listener):
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

    opened: asyncio.Future = asyncio.get_running_loop().create_future()

    class Client(WebSocketClientProtocol):
        def onOpen(self) -> None:
            opened.done() or opened.set_result(self)

        def onMessage(self, payload: bytes, is_binary: bool) -> None:
            listener.on_frame(payload)

        def onClose(self, was_clean: bool, code: int | None, reason: str | None) -> None:
            opened.done() or opened.set_exception(ConnectionError(f"{listener.path}: closed {code} {reason}"))

    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}{listener.path}", origin=f"http://127.0.0.1:{port}", headers={"Cookie": cookie}
    )
    factory.protocol = Client
    await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", port)
    return await asyncio.wait_for(opened, 30)


async def settle(listeners: list[Listener], quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until no listener has received anything for quiet_s (daphne may still be draining)."""
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        now = tuple(listener.records for listener in listeners)
        if now == last:
            return
        last = now
        await asyncio.sleep(quiet_s)


async def measure(port: int, cookie: str, plan: Plan, env: dict[str, str]) -> list[dict]:
    listeners = [Listener("/ws/fleet/") for _ in range(FLEET_LISTENERS)]
    listeners.append(Listener(f"/ws/fleet/?site={site_of(0)}"))
    listeners += [Listener(f"/ws/chargepoints/{slug_of(n)}/") for n in range(CHARGE_POINT_LISTENERS)]
    clients = [await open_listener(port, cookie, listener) for listener in listeners]
    rows = []
    try:
        for batch_size in plan.batch_sizes:
            before = [listener.records for listener in listeners]
            done = await asyncio.to_thread(
                subprocess.run,
                [common.PYTHON, __file__, "--feed", json.dumps(asdict(plan)), "--batch-size", str(batch_size)],
                cwd=common.ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"feeder failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs = result["runs"]
            if "could not handle" in done.stderr:
                raise RuntimeError(f"the sinks refused batches during the run:\n{done.stderr[-2000:]}")
            await settle(listeners)
            received = [listener.records - b for listener, b in zip(listeners, before, strict=True)]
            fleet_received = min(received[:FLEET_LISTENERS])
            # Each run is whole rounds of the fleet: a charge point page gets one record per round.
            cp_expected = (plan.runs + 1) * plan.records_per_run // plan.charge_points
            row = {"batch_size": batch_size, "charge_points": plan.charge_points, "sites": plan.sites}
            for key in ("records_per_s", "cpu_us_per_record", "decode_us_per_record"):
                row[key] = statistics.median(r[key] for r in runs)
            row["store_us_per_record"] = statistics.median(r["store_us_per_record"] for r in runs)
            row["alerts_us_per_record"] = statistics.median(r["alerts_us_per_record"] for r in runs)
            row["push_us_per_record"] = statistics.median(r["push_us_per_record"] for r in runs)
            row["fleet_delivered_pct"] = 100.0 * fleet_received / result["fleet_pushed"]
            row["charge_point_page_delivered_pct"] = 100.0 * min(received[FLEET_LISTENERS + 1 :]) / cp_expected
            rows.append(common.rounded(row))
    finally:
        for client in clients:
            client.sendClose()
    return rows


def run(quick: bool) -> list[dict]:
    plan = plan_for(quick)
    common.ensure_postgres_database()
    common.flush_redis(REDIS_URL)
    with common.scratch_var_dir() as log_dir:
        env = common.production_env("127.0.0.1:9", redis_url=REDIS_URL)  # no broker: handle_batch is fed directly
        common.run_manage(["migrate", "--verbosity", "0"], env)
        setup = SETUP.format(sites=plan.sites, count=plan.charge_points, user=CLIENT_USER)
        cookie = json.loads(common.run_manage(["shell", "-c", setup], env).strip().splitlines()[-1])["cookie"]
        os.sched_setaffinity(0, {OTHERS_CPU})  # the listeners, and daphne (inherits it)
        port = common.free_port()
        daphne = common.spawn_daphne(port, env, log_dir / "daphne.log")
        try:
            return asyncio.run(measure(port, cookie, plan, env))
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- daphne ---\n{common.log_tail(log_dir / 'daphne.log', 1500)}") from exc
        finally:
            common.stop_process(daphne)


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    parser.add_argument("--feed", help=argparse.SUPPRESS)  # the feeder child: the plan as JSON
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.feed).items()})
        print(json.dumps(feed(plan, args.batch_size)))
        return
    common.print_rows(TITLE, run(args.quick))


if __name__ == "__main__":
    if str(Path(__file__).resolve().parent.parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
