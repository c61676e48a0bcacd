"""manage.py commands as real processes, for the tests that signal, kill and restart them, and waiting on them."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings

from gateway.services import STOP_WITHIN_S

POLL_S = 0.1  # how often a wait checks its condition
OUTPUT_TAIL = 3000  # characters of a process's output that a failure shows


def process_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment of a service of the test's own: SQLite and outbox in tmp_path, then `variables`."""
    env = os.environ | {
        "DJANGO_DEBUG": "1",
        "EVDASH_VAR_DIR": str(tmp_path),
        "EVDASH_OUTBOX_DIR": str(tmp_path / "outbox"),
        **variables,
    }
    env.pop("DATABASE_URL", None)
    return env


def manage(args: list[str], env: dict[str, str]) -> None:
    """Run a short manage.py command to its end (migrate, shell -c ...)."""
    subprocess.run(
        [sys.executable, "manage.py", *args],
        env=env,
        cwd=settings.BASE_DIR,
        check=True,
        capture_output=True,
        timeout=120,
    )


def create_charge_points(env: dict[str, str], ports: list[int], poll_interval_ms: int = 250) -> None:
    """Migrate the service's database; add site "depot" with charge points cp-0, cp-1, ... on `ports`."""
    manage(["migrate", "-v", "0"], env)
    manage(
        [
            "shell",
            "-c",
            "from gateway.models import *; s = Site.objects.create(slug='depot', name='Depot'); "
            "p = DeviceProfile.objects.get(slug='generic-ev-charger'); "
            + "; ".join(
                f"ChargePoint.objects.create(slug='cp-{i}', name='CP {i}', site=s, host='127.0.0.1', port={port}, "
                f"poll_interval_ms={poll_interval_ms}, profile=p)"
                for i, port in enumerate(ports)
            ),
        ],
        env,
    )


class Service:
    """A long-running manage.py command, its output appended to a log file (a restart may share it)."""

    def __init__(self, command: str, env: dict[str, str], log: Path, *args: str, verbosity: int = 1) -> None:
        self.log = log
        self._out = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", command, "-v", str(verbosity), *args],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def check_alive(self) -> None:
        code = self.process.poll()
        assert code is None, f"{self.log.stem} exited early ({code}):\n{self.output()[-OUTPUT_TAIL:]}"

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, float]:
        """Send the signal; returns the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(STOP_WITHIN_S + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.stem} ignored {signum!r}:\n{self.output()[-OUTPUT_TAIL:]}") from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """kill -9 unless it has exited, and close the log (the tests' cleanup, and their crash)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._out.close()


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, *services: Service) -> None:
    """Check `condition` until it holds; fail at the deadline, or at once when one of `services` has exited."""
    for _ in _checks(condition, timeout_s, what, services):
        time.sleep(POLL_S)


async def wait_until_async(condition: Callable[[], object], timeout_s: float, what: str, *services: Service) -> None:
    """wait_until that keeps the event loop running meanwhile (a TcpProxy or a subscriber lives on it)."""
    for _ in _checks(condition, timeout_s, what, services):
        await asyncio.sleep(POLL_S)


def _checks(
    condition: Callable[[], object], timeout_s: float, what: str, services: tuple[Service, ...]
) -> Iterator[None]:
    """Yields while `condition` does not hold: the one loop of both waits, which differ only in how they sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for service in services:
            service.check_alive()
        if time.monotonic() > deadline:
            outputs = "".join(f"\n{service.log.stem}:\n{service.output()[-OUTPUT_TAIL:]}" for service in services)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{outputs}")
        yield
