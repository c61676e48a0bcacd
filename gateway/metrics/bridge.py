"""Metrics of runbridge: records in from MQTT and out to Kafka, malformed messages, MQTT connects,
commands forwarded the other way, and the outbox between MQTT and Kafka."""

from collections.abc import Iterator

from prometheus_client.core import Metric

from gateway.metrics.families import counter, labelled_counter
from gateway.metrics.outbox import outbox_metrics
from gateway.mqtt.bridge import Bridge
from gateway.mqtt.command_bridge import CommandBridge


class BridgeCollector:
    """A prometheus_client collector over one runbridge's halves (Observed.parts of kind "bridge")."""

    def __init__(self, bridge: Bridge, commands: CommandBridge | None = None) -> None:
        self.bridge = bridge
        self.commands = commands

    def collect(self) -> Iterator[Metric]:
        bridge = self.bridge
        received, results, statuses = bridge.received, bridge.results_received, bridge.site_statuses_received
        yield labelled_counter(
            "evdash_bridge_records_in_total",
            "Messages taken from the MQTT broker (and acknowledged to it), by kind.",
            ["kind"],
            [
                (["telemetry"], received - results - statuses),
                (["command_result"], results),
                (["site_status"], statuses),
            ],
        )
        yield counter(
            "evdash_bridge_records_out_total",
            "Records Kafka acknowledged (telemetry and command results).",
            bridge.publisher.stats.delivered,
        )
        yield counter(
            "evdash_bridge_malformed_messages_total",
            "MQTT messages on a topic that names no charge point: acknowledged and dropped.",
            bridge.malformed,
        )
        connects = [(["telemetry"], bridge.mqtt_connects)]
        if self.commands is not None:
            stats = self.commands.stats
            connects.append((["commands"], stats.mqtt_connects))
            yield counter(
                "evdash_bridge_commands_forwarded_total",
                "Commands from Kafka the MQTT broker acknowledged.",
                stats.forwarded,
            )
            yield labelled_counter(
                "evdash_bridge_commands_skipped_total",
                "Commands from Kafka not forwarded, by reason (malformed, expired).",
                ["reason"],
                [(["malformed"], stats.malformed), (["expired"], stats.expired)],
            )
        yield labelled_counter(
            "evdash_bridge_mqtt_connects_total",
            "Successful connections to the MQTT broker, by half (telemetry, commands).",
            ["half"],
            connects,
        )
        yield from outbox_metrics(bridge.publisher)
