"""manage.py demo's child processes: what they inherit, and how their shutdown is reported."""

import io
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management.base import CommandError

from gateway import demo
from gateway.management.commands.demo import Command
from gateway.models import ChargePoint
from tests.conftest import free_port, shipped_profile

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


def test_demo_reports_a_dead_poller_and_exits_non_zero(tmp_path: Path) -> None:
    """The whole demo: its poller is killed; the demo says so at once, and again when stopped."""
    http_port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "EVDASH_"))}
    env |= {"EVDASH_VAR_DIR": str(tmp_path), "EVDASH_ADMIN_PASSWORD": "demo-test-pw-5531"}
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "demo",
                "--charge-points",
                "1",
                "--port",
                str(http_port),
                "--kafka-port",
                str(free_port()),
                "--modbus-base-port",
                str(free_port()),
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: serves(f"http://127.0.0.1:{http_port}/accounts/login/"), 90, "the demo to serve")
        poller = child_running(process.pid, "manage.py runpoller")
        assert poller is not None, log_path.read_text()[-2000:]
        os.kill(poller, signal.SIGKILL)
        message = "runpoller ended by itself (signal SIGKILL); the demo keeps serving, Ctrl-C stops it"
        wait_until(lambda: message in log_path.read_text(), 10, "the demo to log the dead poller")
        assert serves(f"http://127.0.0.1:{http_port}/accounts/login/")  # it keeps serving
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    lines = log_path.read_text().splitlines()
    assert "runpoller had ended by itself before the demo stopped (signal SIGKILL)" in lines
    assert "CommandError: Stopped, but not cleanly: runpoller (above)." in lines
    assert "Stopped." not in lines


def demo_options(count: int, base_port: int = 20_000) -> demo.DemoOptions:
    return demo.DemoOptions(
        charge_points=count,
        http_host="127.0.0.1",
        http_port=8000,
        kafka_port=9092,
        modbus_base_port=base_port,
        speedup=1.0,
        seed=7,
    )


def test_small_demo_fleet_is_served_by_pymodbus() -> None:
    args = demo.simulator_args(demo_options(12), ["alfen-eve", "keba-p30"])
    assert args[:5] == ["simulate", "--count", "12", "--base-port", "20000"]
    assert args[args.index("--profiles") + 1] == "alfen-eve,keba-p30"
    assert args[args.index("--seed") + 1] == "7"
    assert "--lean" not in args and "--processes" not in args


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
