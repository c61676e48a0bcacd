"""The one place that sends to channel-layer groups: live telemetry to the browsers."""

from channels.layers import get_channel_layer

from gateway.live.groups import FLEET_GROUP, charge_point_group
from gateway.telemetry import Record

# Event shape (checked in tests/test_live.py): {"type": "telemetry.record", "record": Record}
TELEMETRY_EVENT = "telemetry.record"


async def push_telemetry(records: list[Record]) -> None:
    """Fan records out to the fleet group and to each charge point's group."""
    layer = get_channel_layer()
    if layer is None:
        return
    for record in records:
        event = {"type": TELEMETRY_EVENT, "record": record}
        await layer.group_send(FLEET_GROUP, event)
        await layer.group_send(charge_point_group(record["charge_point"]), event)
