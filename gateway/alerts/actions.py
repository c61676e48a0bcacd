"""What users do to alerts (the write paths views call): acknowledge."""

import logging
import uuid

import orjson
from aiokafka.errors import KafkaError
from asgiref.sync import async_to_sync
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from gateway.alerts.messages import ACKNOWLEDGED
from gateway.alerts.store import mark_done, owe
from gateway.kafka import web_producer
from gateway.kafka.topics import alerts_topic
from gateway.live.push import push_alerts
from gateway.models import Alert, AlertDelivery

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 3.0


def acknowledge(alert_id: uuid.UUID | str, user: AbstractBaseUser) -> Alert:
    """Acknowledge an alert (raises Alert.DoesNotExist): who and when are kept, published and pushed.

    Idempotent: a second acknowledgement (another user, a second click) keeps the first and
    announces nothing. An alert may be acknowledged while active or after it cleared.
    The acknowledgement and its owed publication (an AlertDelivery) are stored in one transaction;
    after the commit it is published at once and marked done; if the broker is down it stays owed,
    and the notifier (gateway/alerts/notify.py) publishes it when it next starts.
    """
    name = user.get_username()
    with transaction.atomic():
        updated = Alert.objects.filter(id=alert_id, acknowledged_at__isnull=True).update(
            acknowledged_at=timezone.now(), acknowledged_by=user, acknowledged_by_name=name
        )
        alert = Alert.objects.get(id=alert_id)
        if updated:
            logger.info(
                "alert %s (%s on %s) acknowledged by %s", alert.id, alert.rule_name, alert.charge_point_slug, name
            )
            (delivery,) = owe(alert, ACKNOWLEDGED)
            transaction.on_commit(lambda: announce(delivery))
    return alert


def announce(delivery: AlertDelivery) -> None:
    """Publish an owed alert message on the alerts topic (then it is done) and push it to the pages;
    a broker outage is logged and leaves it owed."""
    message = delivery.message
    try:
        publish_alert(message)
    except (KafkaError, OSError, TimeoutError) as exc:
        logger.warning(
            "alert %s %s not published (owed, for the notifier's next start): %s: %s",
            message["id"],
            message["event"],
            type(exc).__name__,
            exc,
        )
    else:
        mark_done([delivery.id])
    async_to_sync(push_alerts)([message])


def publish_alert(message: dict) -> None:
    """One alert message to the alerts topic, key = charge point (the web process's one producer)."""
    web_producer.send(
        alerts_topic(), orjson.dumps(message), key=message["charge_point"].encode(), timeout_s=PUBLISH_TIMEOUT_S
    )
