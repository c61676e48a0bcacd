"""Free TCP ports on loopback for the simulator tests (a fleet takes a run of consecutive ports)."""

import os
import socket

from tests.conftest import worker_index

LOW, HIGH = 20_000, 32_000  # below the ephemeral range


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free ports after it, below the ephemeral range.

    Below 32,000, so that the kernel does not hand one of them to an outgoing connection meanwhile.
    Parallel workers (pytest-xdist) each search a slice of their own: two workers checking the same
    run before either binds it would otherwise both get it.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    span = (HIGH - LOW) // max(workers, 1)
    low = LOW + worker_index() * span
    for base in range(low, low + span - count, 997):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports")
