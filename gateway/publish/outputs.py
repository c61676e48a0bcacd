"""The poller's outputs: which transport goes behind its outbox (runpoller --output)."""

import socket
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from gateway.conf import setting
from gateway.kafka.topics import command_results_topic, site_status_topic, telemetry_topic
from gateway.kafka.transport import KafkaTransport
from gateway.mqtt import topics as mqtt_topics
from gateway.publish.outbox import Outbox, outbox_path
from gateway.publish.publisher import OutboxPublisher

OUTPUTS = ("kafka", "mqtt")


def default_poller_id(site: str | None) -> str:
    """POLLER_ID, else the host name (+ "-" + site: one poller per site may share a host)."""
    if configured := setting("POLLER_ID"):
        return configured
    return f"{socket.gethostname()}-{site}" if site else socket.gethostname()


def build_publisher(output: str, *, poller_id: str) -> OutboxPublisher:
    """The poller's publisher: its own outbox file, and a Kafka or MQTT transport in front of it.

    Raises OutboxLocked if another poller with this id is running, ImproperlyConfigured for an
    unknown output or one this build lacks.
    """
    if output not in OUTPUTS:
        raise ImproperlyConfigured(f"unknown poller output {output!r}: choose one of {', '.join(OUTPUTS)}")
    if output == "mqtt":
        try:
            from gateway.mqtt.publisher import build_mqtt_publisher
        except ImportError as exc:
            raise ImproperlyConfigured(f"the mqtt output is not available ({exc})") from exc
    outbox = Outbox(outbox_path(f"poller-{poller_id}"))
    try:
        if output == "mqtt":
            return build_mqtt_publisher(outbox, poller_id)
        return OutboxPublisher(outbox, KafkaTransport(telemetry_topic()))
    except BaseException:
        outbox.close()
        raise


def command_result_topic(output: str) -> Callable[[str, str], str]:
    """(site, charge point) -> where the poller publishes a command's result on this output.

    kafka: the one results topic (keyed by charge point); mqtt: the charge point's command-results
    topic, which the bridge forwards to that Kafka topic.
    """
    if output == "mqtt":
        return mqtt_topics.command_results_topic
    topic = command_results_topic()
    return lambda _site, _charge_point: topic


def site_status_topic_for(output: str) -> Callable[[str], str]:
    """site -> where the poller publishes its site controller's status on this output.

    kafka: the one site-status topic (keyed by site); mqtt: the site's site-status topic, which the
    bridge forwards to that Kafka topic.
    """
    if output == "mqtt":
        return mqtt_topics.site_status_topic
    topic = site_status_topic()
    return lambda _site: topic
