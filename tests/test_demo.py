"""manage.py demo's child processes: what they inherit, and how their shutdown is reported."""

import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.core.management.base import CommandError

from gateway import demo
from gateway.management.commands.demo import Command

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
