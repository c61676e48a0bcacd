"""The poller's MQTT output: the outbox publisher with an MqttTransport, feeding the state topics too."""

from gateway.mqtt.state import ChargePointStates
from gateway.mqtt.transport import MqttTransport
from gateway.publish.outbox import Outbox
from gateway.publish.publisher import OutboxPublisher
from gateway.telemetry import Record


class MqttOutboxPublisher(OutboxPublisher):
    """Telemetry through the outbox (QoS 1); each charge point's online/offline straight to its retained topic."""

    transport: MqttTransport

    def __init__(self, outbox: Outbox, transport: MqttTransport, **options: float | int) -> None:
        super().__init__(outbox, transport, **options)  # type: ignore[arg-type]
        self.states = ChargePointStates(transport)

    def publish(self, record: Record) -> None:
        super().publish(record)
        self.states.observe(record)


def build_mqtt_publisher(outbox: Outbox, poller_id: str) -> OutboxPublisher:
    """runpoller --output mqtt: the broker from EVDASH_MQTT_URL, this poller's will and state topics."""
    return MqttOutboxPublisher(outbox, MqttTransport(poller_id))
