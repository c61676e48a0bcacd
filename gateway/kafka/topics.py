"""Topic names and their creation."""

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from gateway.conf import setting
from gateway.kafka.config import client_options

logger = logging.getLogger(__name__)


def telemetry_topic() -> str:
    return setting("TELEMETRY_TOPIC")


def dead_letter_topic() -> str:
    """Where the consumer puts records it could not decode or handle: evdash.telemetry.dlq by default."""
    return setting("DEAD_LETTER_TOPIC") or f"{telemetry_topic()}.dlq"


def alerts_topic() -> str:
    """Alerts as they are raised, cleared and acknowledged (gateway/alerts/), key = charge point."""
    return setting("ALERTS_TOPIC")


def commands_topic() -> str:
    """Operator commands to the pollers (gateway/commands/messages.py), key = charge point."""
    return setting("COMMANDS_TOPIC")


def command_results_topic() -> str:
    """The pollers' results of commands, key = charge point."""
    return setting("COMMAND_RESULTS_TOPIC")


def site_status_topic() -> str:
    """The site controllers' status every control period (gateway/sitecontrol/messages.py), key = site."""
    return setting("SITE_STATUS_TOPIC")


async def ensure_topics(topics: list[str], partitions: int | None = None) -> None:
    """Create missing topics (keyed by charge point, so partitions give consumers parallelism).

    Brokers that forbid topic creation to clients (managed Kafka) answer with an error that is
    logged, not raised: the operator then creates the topics.
    """
    admin = AIOKafkaAdminClient(**client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        count = partitions or setting("TOPIC_PARTITIONS")
        try:
            await admin.create_topics([NewTopic(t, count, 1) for t in missing])
            logger.info("created Kafka topics %s (%d partitions)", ", ".join(missing), count)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            logger.warning("could not create Kafka topics %s: %s", missing, exc)
    finally:
        await admin.close()
