"""manage.py commands as real processes, for the tests that signal, kill and restart them."""

import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from gateway.services import STOP_WITHIN_S


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


class Service:
    """A long-running manage.py command with its output in a log file."""

    def __init__(self, command: str, env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> None:
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", command, "-v", "1", *args],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, signum: int) -> tuple[int, float]:
        """Send the signal; returns the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(STOP_WITHIN_S + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.stem} ignored {signum!r}:\n{self.output()[-3000:]}") from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._out.close()
