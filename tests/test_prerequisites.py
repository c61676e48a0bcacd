"""scripts/prerequisites decides what `make test` installs, starts or refuses, on a faked system.

Each case runs the real script with --dry-run in a copy of the checkout layout without a venv,
with a PATH of stubs that play a Debian machine (chromium there or not, PostgreSQL up or down,
root or not). The real machine's packages and services are never touched.
"""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from tests.browser import chromium_path

SCRIPT = Path(settings.BASE_DIR) / "scripts" / "prerequisites"
# Real tools the script runs; everything else on PATH is a stub.
REAL_TOOLS = ("bash", "env", "grep", "sleep", "mkdir", "dirname")


@dataclass
class FakeSystem:
    """What the stubs report. Defaults: root, everything installed and running."""

    uid: int = 0
    chromium: bool = True
    python: bool = True
    ensurepip: bool = True
    apt_candidate: bool = True
    postgres_installed: bool = True
    postgres_up: bool = True
    redis_installed: bool = True
    redis_up: bool = True
    packages: tuple[str, ...] = ("mosquitto", "stunnel4")  # what dpkg reports installed


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def run_script(tmp_path: Path, system: FakeSystem, what: str = "test") -> subprocess.CompletedProcess:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "scripts" / "prerequisites")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in REAL_TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    stub(bin_dir, "id", f"echo {system.uid}")
    candidate = "1.0-1" if system.apt_candidate else "(none)"
    stub(bin_dir, "apt-cache", f'echo "$2:"; echo "  Installed: (none)"; echo "  Candidate: {candidate}"')
    stub(bin_dir, "apt-get", "exit 0")
    installed = " ".join(system.packages)
    dpkg_query = f'for p in {installed}; do [[ ${{@: -1}} == "$p" ]] && echo -n "install ok installed" && exit; done'
    stub(bin_dir, "dpkg-query", f"{dpkg_query}; exit 1")
    # A Mosquitto running on the machine: the script must never configure, start or restart it.
    stub(bin_dir, "systemctl", 'echo "systemctl $*" >> "$0.calls"')
    stub(bin_dir, "service", 'echo "service $*" >> "$0.calls"')
    if system.chromium:
        stub(bin_dir, "chromium", "exit 0")
    if system.python:
        stub(bin_dir, "python3.11", f"exit {0 if system.ensurepip else 1}")
    if system.postgres_installed:
        stub(bin_dir, "pg_isready", f"exit {0 if system.postgres_up else 2}")
        stub(bin_dir, "pg_lsclusters", "echo '15 main 5432 down postgres /var/lib/postgresql/15/main log'")
        stub(bin_dir, "pg_ctlcluster", "exit 0")
    if system.redis_installed:
        stub(bin_dir, "redis-cli", "echo PONG" if system.redis_up else "exit 1")
        stub(bin_dir, "redis-server", "exit 0")
    env = {"PATH": str(bin_dir), "PYTHON": "python3.11"}
    return subprocess.run(
        [shutil.which("bash"), str(checkout / "scripts" / "prerequisites"), "--dry-run", what],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def actions(result: subprocess.CompletedProcess) -> list[str]:
    return [line.removeprefix("would run: ") for line in result.stdout.splitlines() if line.startswith("would run: ")]


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert actions(result) == []  # refused before doing anything
    return lines[0]


INSTALL = "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"


def test_ready_system_changes_nothing(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem())
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_root_installs_missing_chromium_without_apt_update(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem(chromium=False))
    assert result.returncode == 0, result.stderr
    assert actions(result) == [f"{INSTALL} chromium"]


def test_apt_update_only_when_apt_does_not_know_the_package(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem(chromium=False, apt_candidate=False))
    assert result.returncode == 0, result.stderr
    assert actions(result) == ["apt-get update -qq", f"{INSTALL} chromium"]


def test_non_root_gets_the_one_apt_command(tmp_path: Path) -> None:
    line = one_line_failure(run_script(tmp_path, FakeSystem(uid=1000, chromium=False)))
    assert "chromium is not installed" in line
    assert "sudo apt-get install -y chromium" in line


def test_root_installs_the_mqtt_and_tls_test_servers_and_leaves_the_running_mosquitto_alone(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem(packages=()))
    assert result.returncode == 0, result.stderr
    assert "mosquitto and stunnel4 are not installed (MQTT and Kafka TLS tests)" in result.stdout
    assert actions(result) == [f"{INSTALL} mosquitto stunnel4"]
    assert not list((tmp_path / "bin").glob("*.calls"))  # no systemctl / service call


def test_root_installs_only_the_missing_test_server(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem(packages=("mosquitto",)))
    assert result.returncode == 0, result.stderr
    assert actions(result) == [f"{INSTALL} stunnel4"]


def test_non_root_gets_one_line_for_the_test_servers(tmp_path: Path) -> None:
    line = one_line_failure(run_script(tmp_path, FakeSystem(uid=1000, packages=("stunnel4",))))
    assert "mosquitto is not installed (MQTT and Kafka TLS tests)" in line
    assert "sudo apt-get install -y mosquitto " in line


def test_root_installs_python_venv_when_ensurepip_is_missing(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem(ensurepip=False), what="python")
    assert result.returncode == 0, result.stderr
    assert actions(result) == [f"{INSTALL} python3.11-venv"]


def test_missing_python_for_non_root(tmp_path: Path) -> None:
    line = one_line_failure(run_script(tmp_path, FakeSystem(uid=1000, python=False), what="python"))
    assert "sudo apt-get install -y python3.11 python3.11-venv" in line


def test_root_starts_postgres_and_redis_when_down(tmp_path: Path) -> None:
    result = run_script(tmp_path, FakeSystem(postgres_up=False, redis_up=False))
    assert result.returncode == 0, result.stderr
    started = actions(result)
    assert started[0] == "pg_ctlcluster --skip-systemctl-redirect 15 main start"
    assert started[1].startswith("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 ")
    assert len(started) == 2


def test_non_root_is_told_how_to_start_postgres(tmp_path: Path) -> None:
    line = one_line_failure(run_script(tmp_path, FakeSystem(uid=1000, postgres_up=False)))
    assert "sudo pg_ctlcluster 15 main start" in line


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (FakeSystem(postgres_installed=False), "PostgreSQL is not installed"),
        (FakeSystem(redis_installed=False), "Redis is not installed"),
    ],
)
def test_missing_service_is_one_line(tmp_path: Path, system: FakeSystem, expected: str) -> None:
    assert expected in one_line_failure(run_script(tmp_path, system))


def test_missing_chromium_fails_the_browser_tests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    # A failure, never a skip. Caught by hand: a skip escaping here would skip this test too.
    outcome: BaseException | None = None
    try:
        chromium_path()
    except BaseException as exc:
        outcome = exc
    assert type(outcome) is pytest.fail.Exception, repr(outcome)
    assert "chromium is not installed" in str(outcome)
    stub(tmp_path, "chromium", "exit 0")
    assert chromium_path() == str(tmp_path / "chromium")


def test_make_test_runs_the_checks_before_any_test(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make, "make is not installed"
    result = subprocess.run(
        [make, "-n", "-W", "requirements.txt", "test"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    python_check = next(i for i, line in enumerate(lines) if "scripts/prerequisites python" in line)
    venv = next(i for i, line in enumerate(lines) if "-m venv" in line)
    system_check = next(i for i, line in enumerate(lines) if "scripts/prerequisites test" in line)
    first_pytest = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert python_check < venv < system_check < first_pytest
