"""manage.py demo's child processes: what they inherit, and how their shutdown is reported."""

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from django.conf import settings
from django.core.management.base import CommandError
from prometheus_client.parser import text_string_to_metric_families

from gateway import demo
from gateway.management.commands.demo import Command
from gateway.models import ChargePoint, DeviceProfile, Site
from gateway.mqtt.embedded import start_mqtt_broker, stop_mqtt_broker
from tests.conftest import free_port, shipped_profile
from tests.ports import free_port_run

# A child that announces itself, then runs until stopped; SIGTERM handling is chosen per test.
CHILD = """
import signal, sys, time
{on_sigterm}
print("ready", flush=True)
time.sleep(60)
"""
IGNORES_SIGTERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
STOPS_CLEANLY = "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    """Started children; any left running at the end is killed (no leftover processes)."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def start_child(children: list[subprocess.Popen], on_sigterm: str) -> subprocess.Popen:
    """A real child process, returned once it has installed its SIGTERM handling."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(on_sigterm=on_sigterm)], stdout=subprocess.PIPE, text=True
    )
    children.append(process)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"  # bounded: the child exits after 60 s
    return process


def test_admin_password_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVDASH_ADMIN_PASSWORD", "s3cret-demo-pw")
    monkeypatch.setenv("EVDASH_RELOAD_INTERVAL_S", "2")
    assert demo.take_admin_password() == "s3cret-demo-pw"
    # Every child started afterwards: the broker (plain inherited environment) ...
    inherited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('EVDASH_ADMIN_PASSWORD'))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert inherited.stdout.strip() == "None"
    # ... and the simulator and the poller (demo.child_environment).
    options = demo.DemoOptions(
        charge_points=1, http_host="127.0.0.1", http_port=1, kafka_port=19092, modbus_base_port=2, speedup=1, seed=None
    )
    env = demo.child_environment(options)
    assert "EVDASH_ADMIN_PASSWORD" not in env
    assert "s3cret-demo-pw" not in env.values()
    # Positive control: the rest of the environment still reaches the children.
    assert env["EVDASH_RELOAD_INTERVAL_S"] == "2"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"


def test_child_that_ignores_sigterm_is_killed_and_reported(children: list[subprocess.Popen]) -> None:
    process = start_child(children, IGNORES_SIGTERM)
    ended = demo.stop_child(process, "runpoller", timeout_s=0.5)
    assert process.poll() is not None
    assert ended == demo.ChildExit("runpoller", -9, killed_after_s=0.5)
    assert not ended.clean
    assert ended.describe() == "runpoller did not stop within 0.5 s of SIGTERM and was killed"


def test_child_that_stops_on_sigterm_is_clean(children: list[subprocess.Popen]) -> None:
    ended = demo.stop_child(start_child(children, STOPS_CLEANLY), "simulate", timeout_s=10)
    assert ended == demo.ChildExit("simulate", 0)
    assert ended.clean


def test_child_that_died_early_is_reported(children: list[subprocess.Popen]) -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    children.append(process)
    process.wait(10)
    ended = demo.stop_child(process, "runpoller", timeout_s=10)
    assert ended == demo.ChildExit("runpoller", 3, early=True)
    assert ended.describe() == "runpoller had ended by itself before the demo stopped (exit status 3)"


def test_child_that_dies_while_the_demo_runs_is_logged_once(
    children: list[subprocess.Popen], caplog: pytest.LogCaptureFixture
) -> None:
    running = start_child(children, STOPS_CLEANLY)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    children.append(dead)
    dead.wait(10)
    reported: set[str] = set()
    with caplog.at_level(logging.ERROR, logger="gateway.demo"):
        demo.report_child_deaths({"simulate": running, "runpoller": dead}, reported)
        demo.report_child_deaths({"simulate": running, "runpoller": dead}, reported)
    assert [record.getMessage() for record in caplog.records] == [
        "runpoller ended by itself (exit status 2); the demo keeps serving, Ctrl-C stops it"
    ]


def run_report(exits: list[demo.ChildExit]) -> tuple[str, str, CommandError | None]:
    stdout, stderr = io.StringIO(), io.StringIO()
    command = Command(stdout=stdout, stderr=stderr)
    try:
        command.report_shutdown(exits)
    except CommandError as exc:
        return stdout.getvalue(), stderr.getvalue(), exc
    return stdout.getvalue(), stderr.getvalue(), None


def test_demo_says_stopped_only_when_every_child_stopped_cleanly(children: list[subprocess.Popen]) -> None:
    clean = demo.stop_child(start_child(children, STOPS_CLEANLY), "simulate", timeout_s=10)
    killed = demo.stop_child(start_child(children, IGNORES_SIGTERM), "runpoller", timeout_s=0.5)

    stdout, stderr, error = run_report([killed, clean])
    assert "Stopped." not in stdout
    assert stderr.splitlines() == ["runpoller did not stop within 0.5 s of SIGTERM and was killed"]
    assert error is not None and "runpoller" in str(error) and "simulate" not in str(error)

    stdout, stderr, error = run_report([clean])
    assert (stdout.strip(), stderr, error) == ("Stopped.", "", None)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout_s` (every wait has a deadline)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def child_running(parent_pid: int, command: str) -> int | None:
    """The pid of `parent_pid`'s child whose command line contains `command`."""
    for task in Path(f"/proc/{parent_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if command in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                    return int(pid)
            except FileNotFoundError:
                continue
    return None


@dataclass
class RunningDemo:
    process: subprocess.Popen
    http_port: int
    mqtt_port: int
    log_path: Path
    database: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def count(self, sql: str) -> int:
        with contextlib.closing(sqlite3.connect(self.database, timeout=5)) as connection:
            return connection.execute(sql).fetchone()[0]

    def stored_charge_points(self) -> int:
        """Charge points with a LatestTelemetry row: records that went all the way to the consumer."""
        with contextlib.closing(sqlite3.connect(self.database, timeout=5)) as connection:
            return connection.execute("SELECT COUNT(*) FROM gateway_latesttelemetry").fetchone()[0]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


@contextlib.contextmanager
def running_demo(
    tmp_path: Path, charge_points: int = 1, extra_args: tuple[str, ...] = (), **environment: str
) -> Iterator[RunningDemo]:
    """`manage.py demo` (one charge point unless told) on free ports, once it serves pages; killed if left running."""
    http_port, mqtt_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "EVDASH_"))}
    env |= {"EVDASH_VAR_DIR": str(tmp_path), "EVDASH_ADMIN_PASSWORD": "demo-test-pw-5531"} | environment
    log_path = tmp_path / "demo.log"
    ports = ["--port", str(http_port), "--kafka-port", str(free_port()), "--mqtt-port", str(mqtt_port)]
    # The charge points' ports and the site meter's after them, all free (tests run in parallel).
    ports += ["--modbus-base-port", str(free_port_run(charge_points + 1))]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "demo",
                "--charge-points",
                str(charge_points),
                *ports,
                *extra_args,
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = RunningDemo(process, http_port, mqtt_port, log_path, tmp_path / "db.sqlite3")
    try:
        wait_until(lambda: serves(f"http://127.0.0.1:{http_port}/accounts/login/"), 90, "the demo to serve")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def first_telemetry_message(port: int) -> aiomqtt.Message:
    async with aiomqtt.Client("127.0.0.1", port) as subscriber:
        await subscriber.subscribe("evdash/+/+/telemetry", qos=1)
        async for message in subscriber.messages:
            if message.topic.matches("evdash/+/+/telemetry"):  # amqtt also sends others' retained states
                return message
    raise AssertionError("the subscription ended")


def worker_counter(port: int, name: str) -> float:
    """A counter of a worker's /metrics (README, Integrations), summed over its labels; 0 if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_demo_runs_the_edge_path_by_default(tmp_path: Path) -> None:
    """poller -> embedded MQTT broker -> bridge -> Kafka -> consumer, and an orderly stop; with
    --metrics-port, each worker's /metrics counts what went through it."""
    metrics = free_port_run(3)
    with running_demo(tmp_path, extra_args=("--metrics-port", str(metrics))) as running:
        message = asyncio.run(asyncio.wait_for(first_telemetry_message(running.mqtt_port), 30))
        assert message.topic.value == "evdash/demo-site/cp-01/telemetry"
        assert json.loads(message.payload)["charge_point"] == "cp-01"
        wait_until(lambda: running.stored_charge_points() == 1, 30, "a record stored by the consumer")
        counted = {
            "poller": (metrics, "evdash_records_published_total"),
            "bridge": (metrics + 1, "evdash_bridge_records_out_total"),
            "consumer": (metrics + 2, "evdash_consumer_records_total"),
        }
        for worker, (port, counter) in counted.items():
            wait_until(lambda port=port, counter=counter: worker_counter(port, counter) > 0, 30, f"{worker} metrics")
            assert f"  {worker} metrics: http://127.0.0.1:{port}/metrics" in running.log().splitlines()
        assert child_running(running.process.pid, "manage.py runbridge") is not None
        assert child_running(running.process.pid, "manage.py runpoller --output mqtt") is not None
        assert running.stop() == 0, running.log()[-3000:]
    lines = running.log().splitlines()
    # The banner names the site page (load management on: a lone charger's site gets the 40 A floor).
    site_page = f"  site load management: http://127.0.0.1:{running.http_port}/sites/demo-site/ (limit 40 A per phase, "
    assert any(line.startswith(site_page) for line in lines), lines
    assert f"  path: edge: poller -> MQTT mqtt://127.0.0.1:{running.mqtt_port} -> bridge -> Kafka" in lines
    stopping = (
        "Stopping: poller (flushing to MQTT), bridge (flushing to Kafka), simulator, MQTT broker, Kafka broker ..."
    )
    assert stopping in lines
    assert lines[-1] == "Stopped."
    # The bridge carried the records to Kafka (its closing line counts them) and kept none back.
    [closing] = [line for line in lines if "gateway.mqtt.bridge: bridge stopped: " in line]
    assert re.search(r"received=[1-9]\d* forwarded=[1-9]\d* buffered=0 ", closing), closing


def test_two_minutes_of_the_demo_show_history_a_finished_session_and_alerts(tmp_path: Path) -> None:
    """The issue's promise for `make demo`: within two minutes of serving, stored history, at least
    one finished charging session and an alert in the feed (its compressed day: session_scale)."""
    with running_demo(tmp_path, charge_points=12) as running:
        shown = {
            "stored history": "SELECT COUNT(*) FROM gateway_telemetrysample",
            "a finished session": "SELECT COUNT(*) FROM gateway_chargingsession WHERE ended_at IS NOT NULL",
            "an alert": "SELECT COUNT(*) FROM gateway_alert",
        }
        # One deadline for all three: two minutes from the first page served.
        wait_until(
            lambda: all(running.count(sql) > 0 for sql in shown.values()),
            120,
            " and ".join(shown),
        )
        assert running.stop() == 0, running.log()[-3000:]


def test_direct_demo_has_no_mqtt_and_reports_a_dead_poller(tmp_path: Path) -> None:
    """EVDASH_DEMO_DIRECT=1: poller -> Kafka, no MQTT broker, no bridge. Then its poller is killed:
    the demo says so at once, and again when stopped, and exits non-zero."""
    with running_demo(tmp_path, EVDASH_DEMO_DIRECT="1") as running:
        wait_until(lambda: running.stored_charge_points() == 1, 30, "a record stored by the consumer")
        poller = child_running(running.process.pid, "manage.py runpoller --output kafka")
        assert poller is not None, running.log()[-2000:]
        assert child_running(running.process.pid, "manage.py runbridge") is None
        assert child_running(running.process.pid, "gateway.mqtt.embedded") is None
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", running.mqtt_port)) != 0  # nobody listens there
        os.kill(poller, signal.SIGKILL)
        message = "runpoller ended by itself (signal SIGKILL); the demo keeps serving, Ctrl-C stops it"
        wait_until(lambda: message in running.log(), 10, "the demo to log the dead poller")
        assert serves(f"http://127.0.0.1:{running.http_port}/accounts/login/")  # it keeps serving
        assert running.stop() == 1
    lines = running.log().splitlines()
    assert "  path: direct: poller -> Kafka (EVDASH_DEMO_DIRECT=1)" in lines
    assert "Stopping: poller (flushing to MQTT), simulator, Kafka broker ..." not in lines  # no MQTT words
    assert "Stopping: poller (flushing to Kafka), simulator, Kafka broker ..." in lines
    assert "runpoller had ended by itself before the demo stopped (signal SIGKILL)" in lines
    assert "CommandError: Stopped, but not cleanly: runpoller (above)." in lines
    assert "Stopped." not in lines


def test_children_get_the_mqtt_broker_and_an_outbox_under_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVDASH_MQTT_URL", "mqtts://elsewhere:8883")
    monkeypatch.setenv("EVDASH_MQTT_CA_FILE", "/etc/elsewhere-ca.pem")
    monkeypatch.setenv("EVDASH_MQTT_PASSWORD", "elsewhere-pw")
    edge = demo_options(1, mqtt_port=21883)
    env = demo.child_environment(edge)
    assert env["EVDASH_MQTT_URL"] == "mqtt://127.0.0.1:21883"  # the demo's broker, not the shell's
    assert env["EVDASH_MQTT_CA_FILE"] == env["EVDASH_MQTT_PASSWORD"] == ""  # nor its TLS and login
    assert Path(env["EVDASH_OUTBOX_DIR"]) == Path(settings.EVDASH["OUTBOX_DIR"])
    assert demo.poller_args(edge) == ["runpoller", "--output", "mqtt"]
    direct = demo_options(1, direct=True)
    assert demo.child_environment(direct)["EVDASH_MQTT_URL"] == "mqtts://elsewhere:8883"  # untouched, unused
    assert demo.poller_args(direct) == ["runpoller", "--output", "kafka"]


def test_a_fleet_too_large_for_the_embedded_mqtt_broker_is_pointed_to_the_direct_path() -> None:
    assert demo.edge_path_warning(demo_options(1000)) is None
    assert demo.edge_path_warning(demo_options(5000, direct=True)) is None
    warning = demo.edge_path_warning(demo_options(5000))
    assert warning == (
        "5,000 charge points through the embedded MQTT broker (amqtt) cost about 100% of a core; "
        "for a large fleet set EVDASH_DEMO_DIRECT=1 (the direct path)"
    )


@pytest.mark.parametrize(("value", "direct"), [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False)])
def test_direct_path_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, direct: bool) -> None:
    monkeypatch.setenv("EVDASH_DEMO_DIRECT", value)
    assert demo.direct_path_requested() is direct


def test_children_stop_in_the_order_the_records_flow(children: list[subprocess.Popen]) -> None:
    """Each stage flushes into the next, which must still run: poller, bridge, then the rest."""
    names = ["kafka-broker", "mqtt-broker", "simulate", "runbridge", "runpoller"]  # started in this order
    started = {name: start_child(children, STOPS_CLEANLY) for name in names}
    exits = demo.stop_children(started)
    assert [child.name for child in exits] == ["runpoller", "runbridge", "simulate", "mqtt-broker", "kafka-broker"]
    assert all(child.clean for child in exits)


async def test_the_bridge_session_is_opened_before_the_poller_publishes(tmp_path: Path) -> None:
    """What the poller publishes before runbridge first connects waits in the bridge's session."""
    options = demo_options(1, mqtt_port=free_port())
    broker = start_mqtt_broker(port=options.mqtt_port, log_path=tmp_path / "amqtt.log")
    try:
        await demo.open_bridge_session(options)
        async with aiomqtt.Client("127.0.0.1", options.mqtt_port) as poller:
            await poller.publish("evdash/demo-site/cp-01/telemetry", b'{"seq": 1}', qos=1)
        bridge_id = settings.EVDASH["BRIDGE_CLIENT_ID"]
        async with aiomqtt.Client("127.0.0.1", options.mqtt_port, identifier=bridge_id, clean_session=False) as bridge:
            message = await asyncio.wait_for(anext(aiter(bridge.messages)), 10)
        assert (message.topic.value, message.payload) == ("evdash/demo-site/cp-01/telemetry", b'{"seq": 1}')
    finally:
        stop_mqtt_broker(broker)


def demo_options(count: int, base_port: int = 20_000, **extra: object) -> demo.DemoOptions:
    return demo.DemoOptions(
        charge_points=count,
        http_host="127.0.0.1",
        http_port=8000,
        kafka_port=9092,
        modbus_base_port=base_port,
        speedup=1.0,
        seed=7,
        **extra,
    )


def test_small_demo_fleet_is_served_by_pymodbus() -> None:
    args = demo.simulator_args(demo_options(12), ["alfen-eve", "keba-p30"])
    assert args[:5] == ["simulate", "--count", "12", "--base-port", "20000"]
    assert args[args.index("--profiles") + 1] == "alfen-eve,keba-p30"
    assert args[args.index("--seed") + 1] == "7"
    assert "--lean" not in args and "--processes" not in args
    assert args[args.index("--session-scale") + 1] == "1.0"
    compressed = demo.simulator_args(demo_options(12, session_scale=demo.DEMO_SESSION_SCALE), ["alfen-eve"])
    assert compressed[compressed.index("--session-scale") + 1] == "0.01"


@pytest.mark.parametrize(("count", "processes"), [(1000, 1), (5000, min(2, os.cpu_count() or 1))])
def test_large_demo_fleet_is_served_by_the_lean_simulator(count: int, processes: int) -> None:
    args = demo.simulator_args(demo_options(count), ["generic-ev-charger"])
    assert "--lean" in args
    assert args[args.index("--processes") + 1] == str(processes)


def test_demo_fleet_size_is_bounded_by_the_limit_and_the_ports() -> None:
    demo.check_fleet_size(demo.MAX_CHARGE_POINTS, 20_000)
    with pytest.raises(CommandError, match="between 1 and 10,000"):
        demo.check_fleet_size(demo.MAX_CHARGE_POINTS + 1, 20_000)
    with pytest.raises(CommandError, match="between 1 and"):
        demo.check_fleet_size(0, 20_000)
    with pytest.raises(CommandError, match=r"ports 62000\.\.66999"):
        demo.check_fleet_size(5000, 62_000)


@pytest.mark.django_db
def test_demo_fleet_realigns_onto_shifted_ports_and_keeps_admin_edits() -> None:
    for slug in ("alfen-eve", "abb-terra-ac", "keba-p30"):
        shipped_profile(slug)
    assert demo.ensure_demo_fleet(12, 40_000) == 12
    ChargePoint.objects.filter(slug="cp-02").update(name="Gate 2", enabled=False)
    # One port up: every charge point moves onto its neighbour's old port (same unit ids).
    assert demo.ensure_demo_fleet(13, 40_001) == 1
    fleet = {cp.slug: cp for cp in ChargePoint.objects.select_related("profile")}
    assert sorted(cp.port for cp in fleet.values()) == list(range(40_001, 40_014))
    assert {slug: fleet[slug].port for slug in ("cp-01", "cp-02", "cp-13")} == {
        "cp-01": 40_001,
        "cp-02": 40_002,
        "cp-13": 40_013,
    }
    assert all(cp.host == "127.0.0.1" for cp in fleet.values())
    assert (fleet["cp-02"].name, fleet["cp-02"].enabled) == ("Gate 2", False)
    assert fleet["cp-03"].profile.slug == "keba-p30" and fleet["cp-03"].poll_interval_ms == 10_000
    assert demo.ensure_demo_fleet(13, 40_001) == 0  # nothing to change


# --- the demo site's load management ---------------------------------------------------------------
def test_the_simulator_serves_the_site_meter_after_the_charge_points() -> None:
    args = demo.simulator_args(demo_options(12), ["alfen-eve"], "eastron-sdm630")
    assert args[args.index("--site-meter-port") + 1] == "20012"  # base 20000 + 12 charge points
    assert args[args.index("--site-meter-profile") + 1] == "eastron-sdm630"
    assert args[args.index("--wiring") + 1] == ",".join(demo.DEMO_WIRING)
    assert "--site-meter-port" not in demo.simulator_args(demo_options(12), ["alfen-eve"])  # no meter profile
    # Spread over several simulator processes, no process sees every charger: no meter.
    large = demo.simulator_args(demo_options(5000), ["alfen-eve"], "eastron-sdm630")
    assert "--site-meter-port" not in large and "--processes" in large


def test_the_demo_limit_binds_when_the_car_park_is_busy_and_not_when_it_is_quiet() -> None:
    for count in (12, 50, 200):
        limit_a = demo.demo_site_limit_a(count)
        # Busy: 40 % of the bays charging at 16 A (the simulator's smallest car) in the afternoon peak.
        assert demo.DEMO_BUILDING_LOAD_A + 0.4 * count * 16 > limit_a, count
        # Quiet: at night (a third of the peak), a fifth of the bays charging at 16 A fit.
        assert demo.DEMO_BUILDING_LOAD_A / 3 + 0.2 * count * 16 < limit_a, count
    # A lone charger always has room for its minimum above the building's peak.
    assert demo.demo_site_limit_a(1) - demo.DEMO_BUILDING_LOAD_A >= 6


@pytest.mark.django_db
def test_the_demo_site_gets_a_limit_a_meter_wiring_and_priorities_and_keeps_an_operators_limit() -> None:
    for slug in ("alfen-eve", "abb-terra-ac", "keba-p30"):
        shipped_profile(slug)
    if not DeviceProfile.objects.filter(slug=demo.DEMO_METER_PROFILE).exists():  # before its migration lands
        shipped_meter = next(
            path
            for path in (Path(settings.BASE_DIR) / "gateway/profiles/shipped").rglob(f"{demo.DEMO_METER_PROFILE}.json")
        )
        from gateway.models import Register, StatusRule
        from gateway.profiles.store import read_spec_file, save_spec

        save_spec(read_spec_file(shipped_meter), DeviceProfile, Register, StatusRule)
    demo.ensure_demo_fleet(12, 40_000)
    site = Site.objects.get(slug=demo.DEMO_SITE)
    assert site.load_managed and site.limit_a == demo.demo_site_limit_a(12)
    assert (site.meter_profile.slug, site.meter_host, site.meter_port) == ("eastron-sdm630", "127.0.0.1", 40_012)
    fleet = {cp.slug: cp for cp in ChargePoint.objects.all()}
    assert [fleet[f"cp-{n:02d}"].wiring for n in range(1, 10)] == list(demo.DEMO_WIRING)
    assert {fleet[f"cp-{n:02d}"].priority for n in (1, 5, 9)} == {demo.DEMO_FLEET_BAY_PRIORITY}
    assert fleet["cp-02"].priority == demo.DEMO_PRIORITY

    Site.objects.filter(pk=site.pk).update(limit_a=100.0)
    ChargePoint.objects.filter(slug="cp-02").update(priority=90)
    demo.ensure_demo_fleet(13, 40_001)  # moved up a port: the meter follows, the operator's edits stay
    site.refresh_from_db()
    assert (site.limit_a, site.meter_port) == (100.0, 40_014)
    assert ChargePoint.objects.get(slug="cp-02").priority == 90
    assert "sites/demo-site/" in demo.describe_site(demo_options(13))
