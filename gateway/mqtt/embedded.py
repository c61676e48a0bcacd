"""The embedded MQTT broker (amqtt, pure Python, MQTT 3.1.1) for the demo and tests.

Production runs Mosquitto (README, "The edge path"). The demo needs a broker without an install and
without root, so it runs amqtt in a child process: `python -m gateway.mqtt.embedded --port N`.
It listens on loopback only and trusts every client there (no password).

Why a plugin of our own instead of amqtt's AnonymousAuthPlugin: that plugin marks every session
anonymous, and amqtt neither queues messages for a disconnected anonymous session nor keeps the
session at all, so the bridge's persistent session (clean session false) would lose everything
published while it restarts. Our plugin accepts the client without marking it anonymous, so
sessions follow MQTT 3.1.1: a clean_session=False subscriber gets its QoS 1 messages on return.

Quirks of amqtt 0.12.1 (seen in tests/test_embedded_mqtt.py and by hand; Mosquitto has none of them):
- messages queued for an offline session live in memory only (lost when the broker stops);
- a QoS 1 message sent to a subscriber that disconnects before its PUBACK is not sent again when
  the subscriber returns, so a bridge killed mid-flight misses those few messages; nor is one whose
  PUBACK takes over 5 s (amqtt gives up on it);
- when a persistent session returns, the first live messages can overtake the queued ones.
Two more are fixed here (LoopbackBroker):
- a connecting client was sent the retained messages matching ANY client's subscription, not only
  its own; the poller, which subscribes to nothing, drops a connection on which a PUBLISH arrives,
  so one `evdash/#` subscriber would have kept every restarted poller out;
- a returning persistent session got its queued messages, flagged retained, before amqtt even
  read its SUBSCRIBE, and amqtt awaited their PUBACKs first: the bridge, which acknowledges once
  subscribed, stalled 5 s at every reconnect while amqtt timed out on each message.
"""

import argparse
import asyncio
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from gateway.kafka.embedded import EmbeddedBrokerError
from gateway.runtime import die_with_parent, stop_child_process

logger = logging.getLogger(__name__)

# Not 1883: a machine with Mosquitto (like production, and this one) already listens there.
DEFAULT_PORT = 11883


READY_LINE = "embedded MQTT broker (amqtt) listening on %s:%d"


class EmbeddedMqttBrokerError(EmbeddedBrokerError):
    """The embedded MQTT broker could not be started."""


class LoopbackBroker(Broker):
    """amqtt's broker with two fixes (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backlog_deliveries: set[asyncio.Task] = set()

    async def _publish_session_retained_messages(self, session: Session) -> None:
        """Send what was queued for a returning session, in order, without awaiting the PUBACKs
        (amqtt handles the client's SUBSCRIBE only after this returns), as plain messages."""
        handler = self._get_handler(session)
        while handler and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            delivery = asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
            self._backlog_deliveries.add(delivery)  # a reference until done; failures as in amqtt's own
            delivery.add_done_callback(self._delivery_done)

    def _delivery_done(self, delivery: asyncio.Task) -> None:
        self._backlog_deliveries.discard(delivery)
        if not delivery.cancelled() and (error := delivery.exception()) is not None:
            logger.warning("a queued message was not delivered: %s", error)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt calls this on every connect with each filter ANY session subscribed to.
        subscribers = self._subscriptions.get(subscription[0], ())
        if any(subscriber.client_id == session.client_id for subscriber, _ in subscribers):
            await super()._publish_retained_messages_for_subscription(subscription, session)


class TrustLoopbackClients(BaseAuthPlugin):
    """Accept every client, without marking its session anonymous (see the module docstring)."""

    async def authenticate(self, *, session: Session) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's configuration: one TCP listener, trusted clients, no $SYS topics, no packet logging."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {f"{__name__}.TrustLoopbackClients": {}},
    }


async def serve(host: str, port: int) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down (its sessions are dropped)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = LoopbackBroker(broker_config(host, port))
    await broker.start()
    logger.info(READY_LINE, host, port)  # start_mqtt_broker waits for this line
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The embedded MQTT broker (amqtt) of the evdash demo.")
    parser.add_argument("--host", default="127.0.0.1", help="Listen address (loopback: clients are not authenticated).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    asyncio.run(serve(args.host, args.port))


def start_mqtt_broker(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    log_path: Path | None = None,
    timeout_s: float = 20.0,
) -> subprocess.Popen:
    """Start the embedded MQTT broker in a child process and wait until it accepts connections."""
    log_path = log_path or Path(tempfile.gettempdir()) / f"evdash-amqtt-{port}.log"
    if _port_open(host, port):
        raise EmbeddedMqttBrokerError(f"{host}:{port} is already in use; set --mqtt-port or stop what uses it")
    with log_path.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - our interpreter and module, arguments are ours
            [sys.executable, "-m", __name__, "--host", host, "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the broker after the bridge.
            preexec_fn=die_with_parent(),
        )
    # Ready when the child says so: probing the port would make amqtt log an error per probe.
    ready = READY_LINE % (host, port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = log_path.read_text(errors="replace")
        if process.poll() is not None:
            raise EmbeddedMqttBrokerError(f"embedded MQTT broker exited with {process.returncode}: {output[-500:]}")
        if ready in output:
            logger.info("embedded MQTT broker (amqtt) on %s:%d", host, port)
            return process
        time.sleep(0.05)
    stop_mqtt_broker(process)
    raise EmbeddedMqttBrokerError(f"embedded MQTT broker did not listen on {host}:{port} within {timeout_s} s")


def stop_mqtt_broker(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """Stop the broker that start_mqtt_broker started: SIGTERM, then SIGKILL after `timeout_s`."""
    stop_child_process(process, timeout_s)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


if __name__ == "__main__":
    main()
