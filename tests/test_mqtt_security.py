"""MQTT security for real: TLS with our CA, user name + password, the broker's ACL; no credentials in logs."""

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.mqtt.config import parse_mqtt_url
from gateway.mqtt.transport import MqttTransport
from gateway.publish.base import OutboxEntry, TransportUnavailable
from tests.certs import make_certificates
from tests.mosquitto import (
    DEFAULT_USERS,
    Mosquitto,
    mosquitto_fixture,  # noqa: F401 (the `mosquitto` fixture)
)
from tests.test_mqtt_transport import make_transport, receive, watcher

pytestmark = pytest.mark.timeout(60)
POLLER_PASSWORD = DEFAULT_USERS["poller"].password
WRONG_PASSWORD = "Wr0ng-but-s3cret"


async def test_tls_and_password_accepted(mosquitto: Mosquitto) -> None:
    transport = make_transport(mosquitto)
    await transport.connect()
    assert transport.config.tls and transport.config.port == mosquitto.tls_port
    connection = transport._connection
    assert connection is not None and connection.transport is not None
    assert connection.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    await transport.close()


async def test_wrong_password_refused_with_a_clear_error(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = parse_mqtt_url(mosquitto.url("poller", password=WRONG_PASSWORD), ca_file=str(mosquitto.ca_file))
    transport = MqttTransport("p1", config)
    with pytest.raises(TransportUnavailable) as refused:
        await transport.connect()
    message = str(refused.value)
    assert "refused the connection: not authorised (user 'poller')" in message  # Mosquitto answers 5 to MQTT 3.1.1
    assert message.startswith(f"MQTT broker mqtts://poller@127.0.0.1:{mosquitto.tls_port} ")
    result = await transport.send([OutboxEntry(1, "evdash/depot/cp-1/telemetry", b"cp-1", b"{}")])
    assert result.acked == [] and "not authorised" in str(result.error)
    assert WRONG_PASSWORD not in message + repr(refused.value) + caplog.text + repr(transport.config)
    await transport.close()


async def test_unknown_user_refused(mosquitto: Mosquitto) -> None:
    config = parse_mqtt_url(mosquitto.url(), username="intruder", password="x", ca_file=str(mosquitto.ca_file))
    with pytest.raises(TransportUnavailable, match="not authorised"):
        await MqttTransport("p1", config).connect()


async def test_no_credentials_refused(mosquitto: Mosquitto) -> None:
    config = parse_mqtt_url(mosquitto.url(), ca_file=str(mosquitto.ca_file))
    with pytest.raises(TransportUnavailable, match=r"not authorised \(no user name\)"):
        await MqttTransport("p1", config).connect()


async def test_a_certificate_from_another_ca_is_not_trusted(mosquitto: Mosquitto, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "other-ca")
    config = parse_mqtt_url(mosquitto.url("poller"), ca_file=str(other.ca_file))
    with pytest.raises(TransportUnavailable, match="TLS certificate not trusted") as refused:
        await MqttTransport("p1", config).connect()
    assert POLLER_PASSWORD not in str(refused.value)


async def test_plain_mqtt_to_the_tls_listener_fails_clearly(mosquitto: Mosquitto) -> None:
    config = parse_mqtt_url(mosquitto.url("poller").replace("mqtts://", "mqtt://"))
    with pytest.raises(TransportUnavailable, match=r"before CONNACK|no CONNACK|cannot reach"):
        await MqttTransport("p1", config, connect_timeout_s=3).connect()


async def test_acl_the_poller_cannot_publish_elsewhere(mosquitto: Mosquitto) -> None:
    """Mosquitto 2.0 PUBACKs a denied QoS 1 PUBLISH from an MQTT 3.1.1 client, drops it, and closes the
    connection. The transport reports that, the next send reconnects; the watcher (reads #) never
    sees a forbidden message, and the allowed one behind them arrives."""
    transport = make_transport(mosquitto)
    forbidden = ["evdash/depot/cp-1/commands", "evdash/depot/cp-1/telemetry/x", "other/topic", "evdash/pollers/x/y"]
    pending = [OutboxEntry(i, topic, b"cp-1", b"forbidden") for i, topic in enumerate(forbidden, 1)]
    pending.append(OutboxEntry(9, "evdash/depot/cp-1/telemetry", b"cp-1", b"allowed"))
    errors = []
    async with watcher(mosquitto, "#") as client:
        for _ in range(len(pending) + 2):  # as the publisher retries, from the oldest unconfirmed
            result = await transport.send(pending)
            errors.append(result.error)
            pending = [e for e in pending if e.id not in set(result.acked)]
            if not pending:
                break
        assert not pending
        got = await receive_until(client, b"allowed")
    # Also on "#": the poller's state going online at each connect and offline by its will at each drop.
    assert [(str(m.topic), m.payload) for m in got if not str(m.topic).startswith("evdash/pollers/p1/")] == [
        ("evdash/depot/cp-1/telemetry", b"allowed")
    ]
    assert "broker closed the connection" in str(errors[0])
    await transport.close()


async def receive_until(client, payload: bytes, linger_s: float = 0.5) -> list:
    """Every message up to the one with `payload`, and whatever follows within linger_s."""
    got = []
    while not any(m.payload == payload for m in got):
        got += await receive(client, 1)
    try:
        while True:
            got += await receive(client, 1, timeout_s=linger_s)
    except AssertionError:
        return got


async def test_the_bridge_user_cannot_publish_and_the_poller_cannot_read(mosquitto: Mosquitto) -> None:
    """The other half of the ACL: read and write rights are split between the two roles."""
    import aiomqtt

    async with watcher(mosquitto, "#") as client:
        telemetry = "evdash/depot/cp-1/telemetry"
        await asyncio.to_thread(publish_with_paho, mosquitto, "bridge", telemetry, b"from the bridge")
        with pytest.raises(AssertionError, match="received 0 of 1"):
            await receive(client, 1, timeout_s=1.0)
    async with aiomqtt.Client(**mosquitto.client_options("poller")) as poller_reader:
        await poller_reader.subscribe("evdash/#", qos=1)
        transport = make_transport(mosquitto)
        await transport.connect()
        await transport.send([OutboxEntry(1, "evdash/depot/cp-1/telemetry", b"cp-1", b"from the poller")])
        await transport.close()
        with pytest.raises(AssertionError, match="received 0 of 1"):
            await receive(poller_reader, 1, timeout_s=1.0)


def publish_with_paho(broker: Mosquitto, user: str, topic: str, payload: bytes) -> None:
    """One QoS 1 PUBLISH from another client library (paho-mqtt, synchronous), as `user`."""
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.tls_set(ca_certs=str(broker.ca_file))
    client.username_pw_set(user, broker.users[user].password)
    client.connect("127.0.0.1", broker.tls_port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_credentials_never_in_logs(mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """Connect, publish, lose the connection, reconnect, close, with every logger at DEBUG."""
    caplog.set_level(logging.DEBUG)
    transport = make_transport(mosquitto, ack_timeout_s=2)
    await transport.connect()
    await transport.send([OutboxEntry(1, "evdash/depot/cp-1/telemetry", b"cp-1", b"{}")])
    mosquitto.restart()
    result = await transport.send([OutboxEntry(2, "evdash/depot/cp-1/telemetry", b"cp-1", b"{}")])
    errors = [str(result.error)]
    await transport.close()
    logging.getLogger("test").info("config %s / %r", transport.config, transport.config)
    assert "poller@127.0.0.1" in caplog.text  # the user name is fine to log
    assert POLLER_PASSWORD not in caplog.text + "".join(errors)
