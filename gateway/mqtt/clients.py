"""The aiomqtt clients of the edge path's subscribers: the bridge, its command half, the poller's command intake.

(The poller's telemetry goes through its own lean client, gateway/mqtt/transport.py.)
"""

import aiomqtt

from gateway.mqtt.config import MqttConfig, ssl_context

# Connect, subscribe and disconnect each wait at most this long, so a stop ends in time even
# with an unresponsive broker.
MQTT_TIMEOUT_S = 5.0
KEEPALIVE_S = 30


def aiomqtt_client(config: MqttConfig, client_id: str, *, persistent: bool, manual_ack: bool = False) -> aiomqtt.Client:
    """A client of the configured broker (TLS and login from `config`).

    persistent: clean_session off, so the broker keeps our QoS 1 messages while we are away.
    manual_ack: no PUBACK on arrival; the caller acknowledges with client._client.ack(mid, qos)
    once the message is safe (aiomqtt has no such switch: paho's own).
    """
    client = aiomqtt.Client(
        config.host,
        config.port,
        username=config.username or None,
        password=config.password or None,
        identifier=client_id,
        clean_session=not persistent,
        tls_context=ssl_context(config),
        keepalive=KEEPALIVE_S,
        timeout=MQTT_TIMEOUT_S,
    )
    if manual_ack:
        client._client.manual_ack_set(True)
    return client
