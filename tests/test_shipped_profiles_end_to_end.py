"""Every shipped profile, for real: simulator → probe, and simulator → runpoller → Kafka."""

import asyncio
import json

import pytest
from aiokafka import AIOKafkaConsumer
from asgiref.sync import sync_to_async

from gateway import services
from gateway.kafka.config import client_options
from gateway.modbus.probe import probe
from gateway.models import DeviceProfile
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import load_spec, read_spec_file, shipped_profile_files
from gateway.simulator.fleet import SimulatorFleet
from gateway.telemetry import decode_record, encode_record
from tests.conftest import make_charge_point, shipped_profile, within

SHIPPED = [read_spec_file(path) for path in shipped_profile_files()]
# Values a charger could report; energies are multiples of the coarsest resolution shipped (0.1 kWh).
PINNED = {
    "power_w": 7_360,
    "current_l1_a": 16.0,
    "current_l2_a": 15.5,
    "current_l3_a": 16.5,
    "voltage_l1_v": 231.0,
    "voltage_l2_v": 229.0,
    "voltage_l3_v": 230.0,
    "energy_total_wh": 1_234_500,
    "session_energy_wh": 4_300,
    "temperature_c": 35.0,
    "current_limit_a": 16.0,
    "error_code": 0,
}


def pin(sim, spec: ProfileSpec, status: str) -> dict:
    """Pin every role the profile has; return what a client must read back."""
    expected = {}
    for role, value in PINNED.items():
        if spec.register_for(role) is not None:
            sim.set_value(role, value)
            expected[role] = value
    sim.set_status(status)
    return expected


def assert_record_matches(record: dict, spec: ProfileSpec, expected: dict, status: str) -> None:
    assert decode_record(encode_record(record)) == record
    assert record["status"] == status, record["error"]
    assert record["iec61851_state"] == ("C" if status == "charging" else "A")
    for role, value in expected.items():
        resolution = abs(spec.register_for(role).scale)
        assert record["values"][role] == pytest.approx(value, rel=1e-5, abs=resolution), role
    if "power_w" in spec.derived:
        assert record["values"]["power_w"] == pytest.approx(16.0 * 231 + 15.5 * 229 + 16.5 * 230, rel=1e-3)


@pytest.mark.parametrize("spec", SHIPPED, ids=[spec.slug for spec in SHIPPED])
@pytest.mark.parametrize("status", ["charging", "available"])
async def test_probe_reads_back_what_the_simulator_serves(spec: ProfileSpec, status: str) -> None:
    async with SimulatorFleet(spec, 1, base_port=0, seed=5) as fleet:
        sim = fleet.charge_points[0]
        expected = pin(sim, spec, status)
        result = await probe("127.0.0.1", sim.port, spec.default_unit_id, spec)
    assert result.errors == []
    assert_record_matches(result.record, spec, expected, status)


@pytest.mark.django_db(transaction=True)
async def test_mixed_fleet_through_runpoller_and_kafka(kafka, site) -> None:
    specs = [await sync_to_async(lambda s=s: load_spec(shipped_profile(s.slug)))() for s in SHIPPED]
    fleets = [SimulatorFleet(spec, 1, base_port=0, seed=9) for spec in specs]
    expected: dict[str, tuple[ProfileSpec, dict]] = {}
    try:
        for fleet, spec in zip(fleets, specs, strict=True):
            await fleet.start()
            sim = fleet.charge_points[0]
            expected[spec.slug] = (spec, pin(sim, spec, "charging"))
            profile = await DeviceProfile.objects.aget(slug=spec.slug)
            await sync_to_async(make_charge_point)(site, profile, spec.slug, sim.port, unit_id=spec.default_unit_id)
        records = await services.poll_once()
    finally:
        await asyncio.gather(*(fleet.stop() for fleet in fleets))
    assert sorted(r["charge_point"] for r in records) == sorted(expected)

    consumer = AIOKafkaConsumer(kafka["TELEMETRY_TOPIC"], auto_offset_reset="earliest", **client_options())
    await consumer.start()
    try:
        received: dict[str, dict] = {}
        while len(received) < len(expected):
            for messages in (await within(consumer.getmany(timeout_ms=1000))).values():
                for message in messages:
                    record = json.loads(message.value)
                    assert message.key.decode() == record["charge_point"]
                    received[record["charge_point"]] = record
    finally:
        await consumer.stop()
    for slug, (spec, values) in expected.items():
        assert_record_matches(received[slug], spec, values, "charging")
