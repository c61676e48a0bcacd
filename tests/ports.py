"""Free TCP ports on loopback for the simulator tests (a fleet takes a run of consecutive ports)."""

import socket


def free_port_run(count: int) -> int:
    """A base port with `count` consecutive free ports after it, below the ephemeral range.

    Below 32,000, so that the kernel does not hand one of them to an outgoing connection meanwhile.
    """
    for base in range(20_000, 32_000 - count, 997):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports")
