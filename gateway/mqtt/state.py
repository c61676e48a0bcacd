"""Retained online/offline state: of the poller (evdash/pollers/<id>/state) and of each charge point
(evdash/<site>/<cp>/state), published when it changes and all again after every reconnect.

State messages bypass the outbox: only the latest state matters, and a broker that lost its
retained messages (a restart without persistence) gets them again on the next connect.
"""

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from gateway.choices import OperatorStatus
from gateway.mqtt.topics import charge_point_state_topic
from gateway.publish.base import TransportUnavailable
from gateway.telemetry import Record, format_ts

if TYPE_CHECKING:
    import asyncio

    from gateway.mqtt.transport import MqttTransport

logger = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
OFFLINE_STATUS = OperatorStatus.OFFLINE.value  # the record status of a charge point that did not answer


def state_payload(state: str, ts: str | None = None, **extra: str) -> bytes:
    """{"state": "online"|"offline", "ts": "...Z", ...}: the body of every retained state message."""
    return orjson.dumps({"state": state, "ts": ts or format_ts(datetime.now(UTC)), **extra})


def poller_state_payload(poller_id: str, state: str) -> bytes:
    return state_payload(state, poller=poller_id)


class ChargePointStates:
    """Each charge point's online/offline as its records show it, kept retained on the broker."""

    def __init__(self, transport: "MqttTransport") -> None:
        self.transport = transport
        self._states: dict[tuple[str, str], tuple[str, bytes]] = {}  # (site, cp) -> (state, payload)
        self.published = 0  # state messages written (for tests and stats)
        transport.add_connect_listener(self.publish_all)

    def observe(self, record: Record) -> None:
        """Called for every published record: one dict lookup unless the state changed."""
        key = (record["site"], record["charge_point"])
        state = OFFLINE if record["status"] == OFFLINE_STATUS else ONLINE
        known = self._states.get(key)
        if known is not None and known[0] == state:
            return
        payload = state_payload(state, record["ts"])  # ts: when the change was seen
        self._states[key] = (state, payload)
        self._publish(key, payload)

    def state_of(self, site: str, charge_point: str) -> str | None:
        known = self._states.get((site, charge_point))
        return known[0] if known else None

    def publish_all(self) -> None:
        """After a (re)connect: the broker may have lost them, or missed changes while we were away."""
        for key, (_, payload) in self._states.items():
            self._publish(key, payload)

    def _publish(self, key: tuple[str, str], payload: bytes) -> None:
        if not self.transport.connected:
            return  # publish_all sends it on the next connect
        try:
            future = self.transport.publish_state(charge_point_state_topic(*key), payload)
        except TransportUnavailable:
            return
        self.published += 1
        future.add_done_callback(_ignore_lost)


def _ignore_lost(future: "asyncio.Future[None]") -> None:
    """A state message lost with its connection is published again after the reconnect."""
    if not future.cancelled() and future.exception() is not None:
        logger.debug("state message not confirmed: %s", future.exception())
