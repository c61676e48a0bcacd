"""build_mqtt_publisher: the outbox publisher with the MQTT transport, from the settings, feeding the state topics."""

from pathlib import Path

import orjson
import pytest
from django.conf import settings

from gateway.mqtt.publisher import build_mqtt_publisher
from gateway.publish.outbox import Outbox
from gateway.telemetry import encode_record
from tests.mosquitto import (
    Mosquitto,
    mosquitto_fixture,  # noqa: F401 (the `mosquitto` fixture)
)
from tests.test_mqtt_transport import receive, records, retained, watcher

pytestmark = pytest.mark.timeout(60)


async def test_records_through_the_outbox_and_states_on_change(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(settings.EVDASH, "MQTT_URL", mosquitto.url().replace("mqtts://", "mqtts://poller@"))
    monkeypatch.setitem(settings.EVDASH, "MQTT_PASSWORD", mosquitto.users["poller"].password)
    monkeypatch.setitem(settings.EVDASH, "MQTT_CA_FILE", str(mosquitto.ca_file))
    publisher = build_mqtt_publisher(Outbox(tmp_path / "poller-p1.sqlite3"), "p1")
    first = records(["cp-1", "cp-2"], 3)
    then = records(["cp-2"], 2, offline=True) + records(["cp-2"], 1)
    published = first + then
    async with watcher(mosquitto, "evdash/depot/#") as client:
        await publisher.start()
        for record in first:  # published before the first connect: their states go out once connected
            publisher.publish(record)
        assert await publisher.flush(10)
        for record in then:  # while connected: each change goes out as it happens
            publisher.publish(record)
        assert await publisher.flush(10)
        got = await receive(client, len(published) + 4)  # + cp-1 online, cp-2 online, offline, online
    await publisher.close()
    telemetry = [m.payload for m in got if str(m.topic).endswith("/telemetry")]  # the state messages skip the outbox
    assert telemetry == [encode_record(r) for r in published]
    states = [(str(m.topic), orjson.loads(m.payload)["state"]) for m in got if str(m.topic).endswith("/state")]
    assert states == [
        ("evdash/depot/cp-1/state", "online"),
        ("evdash/depot/cp-2/state", "online"),
        ("evdash/depot/cp-2/state", "offline"),
        ("evdash/depot/cp-2/state", "online"),
    ]
    assert (await retained(mosquitto, "evdash/depot/cp-2/state"))["state"] == "online"
    assert (await retained(mosquitto, "evdash/pollers/p1/state"))["state"] == "offline"  # closed cleanly
    assert publisher.stats.delivered == len(published)
