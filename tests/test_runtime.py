"""Process lifetime: what the demo starts never outlives it, even when it is killed outright."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings

SPAWNER = """
import subprocess, sys
from gateway.runtime import die_with_parent
child = subprocess.Popen(["sleep", "60"], start_new_session=True, preexec_fn=die_with_parent())
print(child.pid, flush=True)
sys.stdin.read()
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its (re-parented) reaper counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_children_die_when_the_parent_is_killed() -> None:
    spawner = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], cwd=settings.BASE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = int(spawner.stdout.readline())
    assert alive(child)
    spawner.send_signal(signal.SIGKILL)
    spawner.wait(10)
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)
