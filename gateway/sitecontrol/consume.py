"""The server's side of site load management: consume the controllers' statuses.

runconsumer consumes evdash.site-status (keyed by site: one site's statuses stay in order) with the
telemetry consumer's machinery (gateway/kafka/consumer.py, decode=SiteStatus.from_json) in its own
group, EVDASH_CONSUMER_GROUP + "-sites", into three sinks in order:
- the SiteSample rows (gateway/sitecontrol/sink.py): the site page's history, the fleet's headroom;
- the site alerts (AlertEngine.on_site_status: meter stale, over the limit, refused);
- the live push to the site page (gateway.live.push.push_site_status).
A status that is not one goes to evdash.site-status.dlq. A new group starts from the earliest offset
the topic holds, so the page's history holds what was published before the consumer first ran (the
alert engine ignores statuses more than an hour old).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError

from gateway.alerts.engine import AlertEngine
from gateway.conf import setting
from gateway.kafka.consumer import Sink, TelemetryConsumer
from gateway.kafka.topics import ensure_topics, site_status_topic
from gateway.live.push import push_site_status
from gateway.sitecontrol.messages import SiteStatus
from gateway.sitecontrol.sink import store_site_samples

logger = logging.getLogger(__name__)

JOB_NAME = "the site status consumer"
FAILURE_COST = "site statuses are no longer stored, alerted on or pushed to the site pages"


def site_status_dead_letter_topic() -> str:
    """Where messages that are not site statuses (or cannot be stored) go: evdash.site-status.dlq."""
    return f"{site_status_topic()}.dlq"


def site_status_group_id() -> str:
    return f"{setting('CONSUMER_GROUP')}-sites"


def build_site_status_consumer(*, alerts: AlertEngine | None = None, **options: Any) -> TelemetryConsumer:
    """The consumer of site statuses: samples, then the alert engine's on_site_status (if given), then the push."""
    sinks: list[Sink] = [store_site_samples]
    if alerts is not None:
        sinks.append(alerts.on_site_status)
    sinks.append(push_site_status)
    options.setdefault("auto_offset_reset", "earliest")
    return TelemetryConsumer(
        site_status_topic(),
        group_id=options.pop("group_id", None) or site_status_group_id(),
        sinks=sinks,
        dead_letter_to=site_status_dead_letter_topic(),
        decode=SiteStatus.from_json,
        **options,
    )


async def consume_site_statuses(stop: asyncio.Event, consumer: TelemetryConsumer) -> None:
    """Create the site-status topics if the broker lets us, then consume until stop is set."""
    try:
        await ensure_topics([site_status_topic(), site_status_dead_letter_topic()])
    except (KafkaError, OSError) as exc:
        logger.warning("could not check the site status topics (%s); continuing", exc)
    try:
        await consumer.run(stop)
    finally:
        logger.info(
            "site status consumer stopped: %d handled, %d malformed and %d failed dead-lettered",
            consumer.handled,
            consumer.skipped,
            consumer.failed,
        )


def site_status_jobs(
    alerts: AlertEngine | None = None, consumer: TelemetryConsumer | None = None
) -> dict[str, tuple[Callable[[asyncio.Event], Awaitable[None]], str]]:
    """runconsumer's job for the site statuses (name -> (job taking a stop event, what its failure costs))."""
    consumer = consumer or build_site_status_consumer(alerts=alerts)

    async def run(stop: asyncio.Event) -> None:
        await consume_site_statuses(stop, consumer)

    return {JOB_NAME: (run, FAILURE_COST)}
