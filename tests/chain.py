"""The whole chain in one test process: simulator → poller → Kafka → consumer → Channels → WebSocket."""

import asyncio
import time
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections

from evdash.asgi import application
from gateway import services
from gateway.kafka.topics import telemetry_topic
from gateway.models import LatestTelemetry
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.sinks import live_consumer
from gateway.telemetry import decode_record, encode_record, parse_ts
from tests.conftest import CONNECT_TIMEOUT_S, make_charge_point, session_cookie_headers, wait_for
from tests.kafka_read import read_all

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")


async def value_arrives_on_websocket(site, profile) -> dict:
    """Set a value on a simulated charger; return the record that carried it to the browser."""
    user = await sync_to_async(get_user_model().objects.create_user)("operator", password="pw-1234567")
    headers = await sync_to_async(session_cookie_headers)(user)
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=11) as fleet:
        target = fleet.charge_points[0]
        for index, sim in enumerate(fleet.charge_points):
            await sync_to_async(make_charge_point)(site, profile, f"cp-{index}", sim.port)

        stop_poller, stop_consumer = asyncio.Event(), asyncio.Event()
        consumer = live_consumer(telemetry_topic(), auto_offset_reset="earliest")
        consumer_task = asyncio.create_task(services.run_consumer(stop_consumer, consumer))
        browser = WebsocketCommunicator(application, "/ws/chargepoints/cp-0/", headers=headers)
        connected, _ = await browser.connect(timeout=CONNECT_TIMEOUT_S)
        assert connected is True
        assert (await browser.receive_json_from(timeout=CONNECT_TIMEOUT_S))["type"] == "snapshot"
        await asyncio.wait_for(consumer.assigned.wait(), 30)

        target.set_status("charging")
        target.set_value("current_l1_a", 23.45)
        target.set_value("power_w", 16_180)
        poller_task = asyncio.create_task(services.run_poller(stop_poller))
        try:
            deadline = time.monotonic() + 30
            record = None
            while record is None:
                message = await browser.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
                received_at = datetime.now(UTC)
                assert message["type"] == "telemetry"
                assert {r["charge_point"] for r in message["records"]} == {"cp-0"}
                record = next((r for r in message["records"] if r["values"]["current_l1_a"] == 23.45), None)
            # Both charge points polled and stored before the poller stops: the value can reach the
            # page before the poller's staggered schedule has come to the second one.
            while await LatestTelemetry.objects.acount() < 2:
                assert time.monotonic() < deadline, "the second charge point was never stored"
                await asyncio.sleep(0.05)
            # Stop the poller (it flushes), then the consumer must handle exactly what reached Kafka
            # and store each charge point's newest record.
            stop_poller.set()
            await asyncio.wait_for(poller_task, 20)
            in_kafka = await read_all(telemetry_topic())
            await wait_for(lambda: consumer.handled == len(in_kafka), what=f"{len(in_kafka)} records handled")
            assert (consumer.skipped, consumer.failed, consumer.dead_lettered) == (0, 0, 0)
            newest = {}
            for message in in_kafka:
                sent = decode_record(message.value)
                if sent["seq"] > newest.get(sent["charge_point"], {"seq": -1})["seq"]:
                    newest[sent["charge_point"]] = sent
            assert sorted(newest) == ["cp-0", "cp-1"]
            stored = {
                row.charge_point.slug: row.record
                async for row in LatestTelemetry.objects.select_related("charge_point")
            }
            assert stored == newest
            assert stored["cp-0"]["values"]["current_l1_a"] == 23.45 and stored["cp-0"]["seq"] >= record["seq"]
        finally:
            stop_poller.set()
            stop_consumer.set()
            await asyncio.wait_for(asyncio.gather(poller_task, consumer_task), 20)
            await browser.disconnect(timeout=5)
    # Connections opened by sync_to_async's thread would block dropping the test database.
    await sync_to_async(connections.close_all)()
    record["_latency_ms"] = (received_at - parse_ts(record["ts"])).total_seconds() * 1000
    return record


def assert_decoded_correctly(record: dict) -> None:
    latency = record.pop("_latency_ms")
    assert decode_record(encode_record(record)) == record
    assert record["status"] == "charging" and record["iec61851_state"] == "C"
    assert record["values"]["current_l1_a"] == 23.45
    assert record["values"]["power_w"] == 16_180
    assert record["quality"] == "good"
    assert 0 <= latency < 5000
