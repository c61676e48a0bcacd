"""The one place that sends to channel-layer groups: live telemetry to the browsers, and logouts."""

from channels.layers import get_channel_layer

from gateway.live.groups import FLEET_GROUP, charge_point_group, session_group
from gateway.telemetry import Record

# Event shapes (checked in tests/test_live.py):
#   {"type": "telemetry.record", "record": Record}
#   {"type": "session.logout"}
TELEMETRY_EVENT = "telemetry.record"
LOGOUT_EVENT = "session.logout"


async def push_telemetry(records: list[Record]) -> None:
    """Fan records out to the fleet group and to each charge point's group."""
    layer = get_channel_layer()
    if layer is None:
        return
    for record in records:
        event = {"type": TELEMETRY_EVENT, "record": record}
        await layer.group_send(FLEET_GROUP, event)
        await layer.group_send(charge_point_group(record["charge_point"]), event)


async def close_session_sockets(session_key: str) -> None:
    """Tell every socket opened with this login session to close: the session has ended."""
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(session_group(session_key), {"type": LOGOUT_EVENT})
