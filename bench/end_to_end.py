"""End to end: the record's `ts` (poll completed) → a logged-in fleet WebSocket client receives it.

Two layouts, the same fleet (the demo's: cp-1..cp-N cycling over the 8 shipped profiles, 1 s polls,
KEBA lengthened to its pacing):

- demo: `manage.py demo` on a scratch SQLite (broker, simulator and poller as children; the
  consumer inside the daphne process, in-memory channel layer);
- production: separate `simulate`, `runpoller`, `runconsumer` and daphne on PostgreSQL and Redis
  (a database and Redis db of its own: evdash_bench_end_to_end, db 8) with a Tansu broker.

The client is this process: a session made for a `bench` superuser (Django's test client
force_login in a `manage.py shell`), then an autobahn WebSocket on /ws/fleet/ with that cookie and
the site's Origin. Latency = wall clock at receive − record `ts`, same machine clock; offline
records (written by the poller, not read from a charger) are left out. After a warm-up, RUNS
consecutive windows are measured; each row gives the median over the windows of each window's
p50/p99, records/s received against the fleet's expected rate, and the CPU each process used per
record received. The client's own JSON parsing shares the 2 cores with everything it measures.

    .venv/bin/python bench/end_to_end.py [--quick] [--layouts demo,production] [--charge-points N]
"""

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/end_to_end.py`
    import common  # type: ignore[no-redef]

TITLE = "End to end: poll timestamp → fleet WebSocket receive"
# The production layout's own database and Redis db (other benchmarks flush theirs).
DATABASE_URL = common.own_database_url("end_to_end")
REDIS_URL = common.own_redis_url(8)
LAYOUTS = ("demo", "production")
CLIENT_USER = "bench"

# Run in `manage.py shell` of the layout: the demo fleet and the demo's simulator arguments
# (production only; the demo does both itself), then a logged-in session.
SETUP_FLEET = """
import json
from gateway import demo
from gateway.models import ChargePoint
count, base_port = {count}, {base_port}
demo.ensure_demo_fleet(count, base_port)
wanted = [f"cp-{{i + 1:02d}}" for i in range(count)]
ChargePoint.objects.filter(site__slug=demo.DEMO_SITE).exclude(slug__in=wanted).delete()
options = demo.DemoOptions(count, "127.0.0.1", 0, 0, base_port, speedup=1.0, seed=None)
print(json.dumps(demo.simulator_args(options, [p.slug for p in demo.demo_profiles()])))
"""
SETUP_CLIENT = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from gateway.models import ChargePoint
user = get_user_model().objects.filter(username="{user}").first()
if user is None:
    user = get_user_model().objects.create_superuser("{user}", "bench@localhost", None)
client = Client()
client.force_login(user)
name = settings.SESSION_COOKIE_NAME
expected = sum(1000 / cp.poll_interval_ms for cp in ChargePoint.objects.filter(enabled=True))
print(json.dumps({{"cookie": f"{{name}}={{client.cookies[name].value}}", "expected_per_s": expected}}))
"""


@dataclass
class Plan:
    """How long each phase lasts."""

    charge_points: int
    warmup_s: float
    window_s: float
    runs: int


def plan_for(quick: bool, charge_points: int | None = None) -> Plan:
    if quick:
        return Plan(charge_points or 200, warmup_s=5, window_s=5, runs=3)
    return Plan(charge_points or 1000, warmup_s=10, window_s=15, runs=3)


# --- the client --------------------------------------------------------------------------------


@dataclass
class Received:
    """What the client saw: (receive wall time s, latency ms) per telemetry record."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    frames: int = 0
    snapshots: int = 0

    def add_frame(self, arrived_s: float, payload: bytes) -> None:
        message = json.loads(payload)
        self.frames += 1
        if message.get("type") == "snapshot":
            self.snapshots += 1
            return
        if message.get("type") != "telemetry":
            return
        # One record per frame today; coalesced frames carry a list.
        records = message["records"] if "records" in message else [message["record"]]
        for record in records:
            if record.get("status") == "offline":
                continue
            ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
            self.samples.append((arrived_s, (arrived_s - ts) * 1000))

    def between(self, start_s: float, end_s: float) -> list[float]:
        return [latency for arrived, latency in self.samples if start_s <= arrived < end_s]


async def open_fleet_socket(port: int, cookie: str, received: Received):
    """A WebSocket on /ws/fleet/ as a logged-in browser would open it; returns the protocol."""
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

    opened: asyncio.Future = asyncio.get_running_loop().create_future()

    class FleetClient(WebSocketClientProtocol):
        def onOpen(self) -> None:
            if not opened.done():
                opened.set_result(self)

        def onMessage(self, payload: bytes, is_binary: bool) -> None:
            received.add_frame(time.time(), payload)

        def onClose(self, was_clean: bool, code: int | None, reason: str | None) -> None:
            if not opened.done():  # refused after the handshake (not logged in: 4401)
                opened.set_exception(ConnectionError(f"socket closed: {code} {reason}"))

    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/ws/fleet/", origin=f"http://127.0.0.1:{port}", headers={"Cookie": cookie}
    )
    factory.protocol = FleetClient
    await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", port)
    return await asyncio.wait_for(opened, 30)


async def measure(
    port: int, cookie: str, plan: Plan, processes: dict[str, int], alone: frozenset[str] | set[str] = frozenset()
) -> list[dict]:
    """Connect, wait for live records, drop the warm-up, then measure plan.runs windows.

    `alone`: processes measured without their descendants (the demo's, whose children are listed).
    """
    received = Received()
    client = await open_fleet_socket(port, cookie, received)
    try:
        deadline = time.monotonic() + 120
        while not received.samples:  # the consumer group's first join takes several seconds on Tansu
            if time.monotonic() > deadline:
                raise TimeoutError(f"no live record within 120 s ({received.frames} frames)")
            await asyncio.sleep(0.2)
        await asyncio.sleep(plan.warmup_s)
        windows = []
        meter = common.CpuMeter(processes | {"client": os.getpid()}, alone=frozenset(alone) | {"client"})
        for _ in range(plan.runs):
            meter.start()
            start = time.time()
            await asyncio.sleep(plan.window_s)
            end = time.time()
            cpu, wall = meter.stop()
            latencies = received.between(start, end)
            windows.append((latencies, cpu, wall))
    finally:
        client.sendClose()
    return [window_row(latencies, cpu, wall) for latencies, cpu, wall in windows]


# Every process either layout measures, in the order of the flow; "web_consumer" is the demo's
# daphne process with the consumer inside it.
PROCESSES = ("simulate", "runpoller", "broker", "web_consumer", "runconsumer", "daphne", "client")


def window_row(latencies: list[float], cpu: dict[str, float], wall_s: float) -> dict:
    count = len(latencies)
    cuts = common.percentiles(latencies, (50, 99))
    row = {"records_per_s": count / wall_s, "latency_p50_ms": cuts["p50"], "latency_p99_ms": cuts["p99"]}
    # A record far older than a poll interval is a fault (a replay, a stuck queue), not a slow path.
    row["records_over_1s"] = sum(1 for latency in latencies if latency > 1000)
    gateway_s = sum(seconds for name, seconds in cpu.items() if name != "client")
    row["cpu_us_per_record_all_but_client"] = gateway_s * 1e6 / count if count else math.nan
    for name, seconds in cpu.items():
        row[f"cpu_us_per_record_{name}"] = seconds * 1e6 / count if count else math.nan
        row[f"cpu_pct_{name}"] = 100 * seconds / wall_s
    return row


def summarise(layout: str, plan: Plan, expected_per_s: float, windows: list[dict], load: tuple) -> dict:
    median = common.median_rows(windows)
    row = {
        "layout": layout,
        "charge_points": plan.charge_points,
        "windows": f"{plan.runs}x{plan.window_s:g}s",
        "latency_p50_ms": median["latency_p50_ms"],
        "latency_p99_ms": median["latency_p99_ms"],
        "latency_p99_worst_window_ms": max(w["latency_p99_ms"] for w in windows),
        "records_over_1s_all_windows": sum(w["records_over_1s"] for w in windows),
        "records_per_s": median["records_per_s"],
        "expected_per_s": expected_per_s,
        "cpu_us_per_record_all_but_client": median["cpu_us_per_record_all_but_client"],
    }
    # The same keys in both layouts ("-" where a layout has no such process), so they line up.
    for kind in ("cpu_us_per_record", "cpu_pct"):
        row |= {f"{kind}_{name}": median.get(f"{kind}_{name}", "-") for name in PROCESSES}
    row["load_avg_1m"] = f"{load[0]:.1f}→{common.load_average()[0]:.1f}"
    return common.rounded(row)


# --- the two layouts ---------------------------------------------------------------------------


def client_setup(env: dict[str, str]) -> dict:
    out = common.run_manage(["shell", "-c", SETUP_CLIENT.format(user=CLIENT_USER)], env)
    return json.loads(out.strip().splitlines()[-1])


def children_by_role(parent: int) -> dict[str, int]:
    """The demo's children (broker, simulate, runpoller) by what they run."""
    roles = {}
    for pid in common.process_tree(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmdline]
        for role in ("simulate", "runpoller"):
            if role in words and role not in roles:
                roles[role] = pid
        if words and "tansu" in Path(words[0]).name and "broker" not in roles:
            roles["broker"] = pid
    return roles


def run_demo_layout(plan: Plan) -> dict:
    load = common.load_average()
    with common.scratch_var_dir() as var_dir:
        env = common.embedded_env(var_dir, EVDASH_ADMIN_PASSWORD=common.ADMIN_PASSWORD)
        port = common.free_port()
        log = var_dir / "demo.log"
        args = ["demo", "--charge-points", str(plan.charge_points), "--port", str(port)]
        args += ["--kafka-port", str(common.free_port()), "--mqtt-port", str(common.free_port())]
        args += ["--modbus-base-port", str(common.free_port_range(plan.charge_points + 1))]  # + the site meter
        demo = common.spawn_manage(args, env, log)
        try:
            common.wait_until(
                lambda: demo.poll() is not None or common.port_open(port), 180, "demo serving HTTP", interval_s=0.5
            )
            if demo.poll() is not None:
                raise RuntimeError(f"demo exited {demo.returncode}:\n{common.log_tail(log)}")
            setup = client_setup(env)
            roles = common.wait_until(
                lambda: (r := children_by_role(demo.pid)) and len(r) == 3 and r, 30, "demo's children"
            )
            # The demo process is daphne + the consumer; its children are measured on their own.
            processes = {"web_consumer": demo.pid} | roles
            windows = asyncio.run(measure(port, setup["cookie"], plan, processes, alone={"web_consumer"}))
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- demo log ---\n{common.log_tail(log)}") from exc
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    return summarise("demo", plan, setup["expected_per_s"], windows, load)


def run_production_layout(plan: Plan) -> dict:
    load = common.load_average()
    common.ensure_postgres_database(DATABASE_URL)
    common.flush_redis(REDIS_URL)
    with common.scratch_var_dir() as log_dir, common.tansu(log_dir=log_dir) as (_, bootstrap):
        env = common.production_env(bootstrap, DATABASE_URL, REDIS_URL)
        base_port = common.free_port_range(plan.charge_points)
        common.run_manage(["migrate", "--verbosity", "0"], env)
        fleet_script = SETUP_FLEET.format(count=plan.charge_points, base_port=base_port)
        simulate = json.loads(common.run_manage(["shell", "-c", fleet_script], env).strip().splitlines()[-1])
        setup = client_setup(env)
        port = common.free_port()
        started: dict[str, subprocess.Popen] = {}
        try:
            started["simulate"] = common.spawn_manage(simulate, env, log_dir / "simulate.log")
            last_port = base_port + plan.charge_points - 1
            common.wait_until(lambda: common.port_open(last_port), 120, "simulator listening", interval_s=0.5)
            started["runconsumer"] = common.spawn_manage(["runconsumer"], env, log_dir / "runconsumer.log")
            started["daphne"] = common.spawn_daphne(port, env, log_dir / "daphne.log")
            started["runpoller"] = common.spawn_manage(["runpoller"], env, log_dir / "runpoller.log")
            processes = {name: process.pid for name, process in started.items()}
            processes["broker"] = _broker_pid(bootstrap)
            windows = asyncio.run(measure(port, setup["cookie"], plan, processes))
            for name, process in started.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited {process.returncode} during the run")
        except Exception as exc:
            logs = "\n".join(f"--- {p.name} ---\n{common.log_tail(p, 800)}" for p in sorted(log_dir.glob("*.log")))
            raise RuntimeError(f"{exc}\n{logs}") from exc
        finally:
            for name in ("runpoller", "simulate", "runconsumer", "daphne"):
                if name in started:
                    common.stop_process(started[name])
    return summarise("production", plan, setup["expected_per_s"], windows, load)


def _broker_pid(bootstrap: str) -> int:
    """The Tansu process listening on `bootstrap` (a child of this process)."""
    port = bootstrap.rsplit(":", 1)[1]
    for pid in common.process_tree(os.getpid()):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(port.encode() in w for w in words) and b"tansu" in words[0]:
            return pid
    raise RuntimeError(f"no broker process on {bootstrap}")


def run(quick: bool, layouts: tuple[str, ...] = LAYOUTS, charge_points: int | None = None) -> list[dict]:
    plan = plan_for(quick, charge_points)
    rows = []
    for layout in layouts:
        runner = run_demo_layout if layout == "demo" else run_production_layout
        try:
            rows.append(runner(plan))
        except Exception as exc:
            rows.append({"layout": layout, "charge_points": plan.charge_points, "error": str(exc)[:3000]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="Comma-separated: demo, production.")
    parser.add_argument("--charge-points", type=int, default=None, help="Default 1000 (quick: 200).")
    options = parser.parse_args()
    layouts = tuple(name.strip() for name in options.layouts.split(",") if name.strip())
    if unknown := set(layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts: {', '.join(sorted(unknown))}")
    rows = run(options.quick, layouts, options.charge_points)
    for row in rows:
        if "error" in row:
            print(f"{row['layout']}: FAILED\n{row['error']}")
    common.print_rows(TITLE, [row for row in rows if "error" not in row])


if __name__ == "__main__":
    main()
