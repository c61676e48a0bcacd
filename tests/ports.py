"""Free TCP ports on loopback for the simulator tests (a fleet takes a run of consecutive ports)."""

import os
import socket
import time

from tests.conftest import worker_index

LOW, HIGH = 20_000, 32_000  # below the ephemeral range
# Ports handed out in this process lately, perhaps not bound yet: a test that asks twice (a demo's
# simulator ports, then its metrics ports) must not get overlapping runs.
HANDED_OUT_S = 300.0
_handed_out: dict[int, float] = {}


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free ports after it, below the ephemeral range.

    Below 32,000, so that the kernel does not hand one of them to an outgoing connection meanwhile.
    Parallel workers (pytest-xdist) each search a slice of their own: two workers checking the same
    run before either binds it would otherwise both get it.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    span = (HIGH - LOW) // max(workers, 1)
    low = LOW + worker_index() * span
    for base in range(low, low + span - count, 97):
        now = time.monotonic()
        if any(now - _handed_out.get(port, -HANDED_OUT_S) < HANDED_OUT_S for port in range(base, base + count)):
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.update(dict.fromkeys(range(base, base + count), time.monotonic()))
        return base
    raise AssertionError("no run of free ports")
