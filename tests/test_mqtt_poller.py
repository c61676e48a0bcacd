"""`manage.py runpoller --output mqtt` as a real process, against simulated chargers and a real Mosquitto
(TLS, password, ACL): telemetry and state topics, the last will on kill -9, "offline" on a clean stop,
and no credential in the process's output."""

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiomqtt
import orjson
import pytest

from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.telemetry import decode_record
from tests.faults import ThreadedHungCharger
from tests.mosquitto import (
    DEFAULT_USERS,
    Mosquitto,
    mosquitto_fixture,  # noqa: F401 (the `mosquitto` fixture)
)
from tests.processes import Service, create_charge_points, process_env, wait_until_async

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
POLLER_PASSWORD = DEFAULT_USERS["poller"].password
POLL_INTERVAL_MS = 250

pytestmark = pytest.mark.timeout(120)


class Poller(Service):
    """runpoller --output mqtt in its own process, logging at -v 3."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__("runpoller", env, log, "--output", "mqtt", verbosity=3)


@pytest.fixture(name="chargers")
def chargers_fixture() -> Iterator[SimulatorFleet]:
    with SimulatorFleet(GENERIC, 2, base_port=0, seed=5).run_in_thread() as fleet:
        yield fleet


@pytest.fixture
def hung() -> Iterator[ThreadedHungCharger]:
    with closing(ThreadedHungCharger()) as charger:
        yield charger


def poller_env(tmp_path: Path, broker: Mosquitto, ports: list[int]) -> dict[str, str]:
    """Own SQLite with one charge point per port (site "depot"), the broker over TLS as user "poller".

    The password comes from EVDASH_MQTT_PASSWORD (the URL names only the user), as a deployment
    would keep it in a secret.
    """
    env = process_env(
        tmp_path,
        EVDASH_MQTT_URL=broker.url().replace("mqtts://", "mqtts://poller@"),
        EVDASH_MQTT_PASSWORD=POLLER_PASSWORD,
        EVDASH_MQTT_CA_FILE=str(broker.ca_file),
        EVDASH_POLLER_ID="edge-1",
        EVDASH_MODBUS_TIMEOUT_S="1",
        EVDASH_RECONNECT_BACKOFF_MAX_S="1",
        EVDASH_POLLER_STATS_INTERVAL_S="5",
    )
    create_charge_points(env, ports, POLL_INTERVAL_MS)
    return env


class Inbox:
    """What a subscriber received, by topic, filled by a background task."""

    def __init__(self) -> None:
        self.messages: list[aiomqtt.Message] = []

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if str(m.topic) == topic]

    def states(self, topic: str) -> list[str]:
        return [orjson.loads(m.payload)["state"] for m in self.on(topic)]


@asynccontextmanager
async def subscribed(broker: Mosquitto, topic: str = "evdash/#", **options: object) -> AsyncIterator[Inbox]:
    inbox = Inbox()
    async with aiomqtt.Client(**broker.client_options("watcher"), **options) as client:
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                inbox.messages.append(message)

        task = asyncio.create_task(collect())
        try:
            yield inbox
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def retained_state(broker: Mosquitto, topic: str) -> str | None:
    """The retained state a new subscriber gets (None if there is none within a second)."""
    async with subscribed(broker, topic) as inbox:
        deadline = time.monotonic() + 1.0
        while not inbox.messages and time.monotonic() < deadline:  # noqa: ASYNC110 (filled by another task)
            await asyncio.sleep(0.05)
    if not inbox.messages:
        return None
    assert inbox.messages[0].retain
    return orjson.loads(inbox.messages[0].payload)["state"]


async def test_runpoller_publishes_telemetry_and_states_with_a_will_on_kill_and_offline_on_stop(
    tmp_path: Path, mosquitto: Mosquitto, chargers: SimulatorFleet, hung: ThreadedHungCharger
) -> None:
    env = poller_env(tmp_path, mosquitto, [chargers.charge_points[0].port, hung.port])
    poller_topic = "evdash/pollers/edge-1/state"
    async with subscribed(mosquitto) as inbox:
        poller = Poller(env, tmp_path / "runpoller.log")
        try:
            await wait_until_async(
                lambda: len(inbox.on("evdash/depot/cp-0/telemetry")) >= 5 and inbox.on("evdash/depot/cp-1/telemetry"),
                60,
                "telemetry of both charge points",
                poller,
            )
            telemetry = inbox.on("evdash/depot/cp-0/telemetry")
            assert {m.qos for m in telemetry} == {1} and not any(m.retain for m in telemetry)
            records = [decode_record(m.payload) for m in telemetry]  # the Kafka contract, schema-checked
            assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
            assert {(r["site"], r["charge_point"]) for r in records} == {("depot", "cp-0")}
            assert decode_record(inbox.on("evdash/depot/cp-1/telemetry")[0].payload)["status"] == "offline"
            assert await retained_state(mosquitto, poller_topic) == "online"
            assert await retained_state(mosquitto, "evdash/depot/cp-0/state") == "online"
            assert await retained_state(mosquitto, "evdash/depot/cp-1/state") == "offline"  # the hung charger
            assert inbox.states("evdash/depot/cp-0/state") == ["online"]  # once, not per record

            poller.kill()  # kill -9: no DISCONNECT, the broker publishes the will
            await wait_until_async(lambda: inbox.states(poller_topic)[-1:] == ["offline"], 10, "the last will")
        finally:
            poller.kill()
        assert await retained_state(mosquitto, poller_topic) == "offline"

        poller = Poller(env, tmp_path / "runpoller.log")  # its outbox is the same file: a restart
        try:
            await wait_until_async(lambda: inbox.states(poller_topic)[-1:] == ["online"], 30, "online again", poller)
            changes = len(inbox.on(poller_topic))
            assert poller.stop(signal.SIGTERM)[0] == 0
            await asyncio.sleep(0.5)
        finally:
            poller.kill()
        # Offline once, by the poller itself: a clean DISCONNECT discards the will.
        assert inbox.states(poller_topic)[changes:] == ["offline"]
    assert await retained_state(mosquitto, poller_topic) == "offline"
    output = poller.output()
    assert "connected to MQTT broker mqtts://poller@127.0.0.1" in output
    assert "Traceback" not in output
    assert POLLER_PASSWORD not in output
    assert "Client evdash-poller-edge-1 disconnected." in mosquitto.log()  # clean, not "closed its connection"
