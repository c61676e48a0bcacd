"""Requests are paced as each vendor asks (KEBA: >= 0.5 s between reads, >= 5 s between writes).

Ground truth: the KEBA quirk "Timing" of ../shared/reference/charger_register_maps.json, citing
keba_v107_code (KEBA's P30 Modbus TCP Programmers Guide V1.07). Arrival times are taken inside the
simulated charger's server, not by the client under test. Lower bounds on spacing are strict; upper
bounds are generous, because two cores are shared by many processes.
"""

import asyncio
import dataclasses
import html
import itertools
import json
import statistics
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.urls import reverse

from gateway.modbus.connection import ChargePointConnection
from gateway.modbus.pacing import Pacing, poll_time
from gateway.modbus.planner import plan_reads
from gateway.modbus.poller import ChargePointConfig, ChargePointPoller, Poller, load_configs
from gateway.modbus.probe import probe
from gateway.models import ChargePoint, DeviceProfile
from gateway.profiles.encode import encode_for_write
from gateway.profiles.spec import ProfileFormatError, ProfileSpec
from gateway.profiles.store import SHIPPED_DIR, parse_profile_json, read_spec_file
from gateway.runtime import wait_unless_stopped
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.server import ArrivedRequest, SimulatedChargePoint
from tests.conftest import make_charge_point, shipped_profile, wait_for, within

KEBA = read_spec_file(SHIPPED_DIR / "keba-p30.json")
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
KEBA_READ_GAP_S = 0.5  # "Recommended read interval >= 0.5 s" (keba_v107_code)
KEBA_WRITE_GAP_S = 5.0  # "write interval >= 5 s" (keba_v107_code)
FLOAT_SLACK_S = 1e-6  # float rounding of monotonic timestamps only, not a timing margin


def gaps(requests: list[ArrivedRequest]) -> list[float]:
    """Seconds between consecutive arrivals."""
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


class TimedRecords:
    """A publish callback that notes when each record was published."""

    def __init__(self) -> None:
        self.records: list[tuple[float, dict]] = []

    def __call__(self, record: dict) -> None:
        self.records.append((time.monotonic(), record))

    def of(self, slug: str) -> list[tuple[float, dict]]:
        return [(at, r) for at, r in self.records if r["charge_point"] == slug]


@pytest.fixture
def quick_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.EVDASH, "RELOAD_INTERVAL_S", 0.5)
    monkeypatch.setitem(settings.EVDASH, "MODBUS_TIMEOUT_S", 1.0)


def test_the_keba_profile_declares_its_vendors_pacing_with_the_source() -> None:
    assert (KEBA.request_gap_ms, KEBA.write_gap_ms) == (500, 5000)
    assert "keba_v107_code" in KEBA.pacing_source and "keba_v107_code" in KEBA.source
    # Round trip through the export format keeps it.
    assert ProfileSpec.from_dict(json.loads(json.dumps(KEBA.to_dict()))) == KEBA


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_gap_ms": -1}, "request_gap_ms must be a whole number of milliseconds from 0 to 60000"),
        ({"write_gap_ms": 600_000}, "write_gap_ms must be a whole number of milliseconds from 0 to 60000"),
        ({"request_gap_ms": "500"}, "request_gap_ms'? must be a whole number"),
        ({"pacing_source": ""}, "pacing needs pacing_source"),
        ({"write_gap_ms": 20_000}, "heartbeat 'set_failsafe_timeout' every 10 s cannot keep 20000 ms between writes"),
    ],
)
def test_profile_import_refuses_bad_pacing(change: dict, message: str) -> None:
    document = KEBA.to_dict() | change
    with pytest.raises(ProfileFormatError, match=message):
        parse_profile_json(json.dumps(document), origin="keba.json")


@pytest.mark.django_db(transaction=True)
async def test_paced_requests_are_spaced_and_other_chargers_are_not_slowed(site, quick_reload) -> None:
    """One poller, two chargers: the KEBA's requests arrive >= 0.5 s apart, the generic one keeps 250 ms."""
    keba_profile = await sync_to_async(shipped_profile)("keba-p30")
    generic_profile = await sync_to_async(shipped_profile)("generic-ev-charger")
    async with (
        SimulatorFleet(KEBA, 1, base_port=0, seed=11) as keba_fleet,
        SimulatorFleet(GENERIC, 1, base_port=0, seed=12) as generic_fleet,
    ):
        keba, generic = keba_fleet.charge_points[0], generic_fleet.charge_points[0]
        await sync_to_async(make_charge_point)(
            site, keba_profile, "keba", keba.port, unit_id=KEBA.default_unit_id, poll_interval_ms=10_000
        )
        await sync_to_async(make_charge_point)(site, generic_profile, "generic", generic.port)
        published, stop = TimedRecords(), asyncio.Event()
        task = asyncio.create_task(Poller(published).run(stop))
        try:
            # One whole KEBA poll: 15 reads, then the heartbeat write (5018), then the next poll's first read.
            await wait_for(
                lambda: any(r.write for r in keba.requests_received) and len(keba.requests_received) >= 17,
                timeout_s=60,
                what="a whole paced KEBA poll with its heartbeat write",
            )
        finally:
            stop.set()
            await within(task, 10)
    arrivals = keba.requests_received
    spacing = gaps(arrivals)
    print(f"KEBA: {len(arrivals)} requests, gaps min {min(spacing):.3f} s, max {max(spacing):.3f} s")
    assert min(spacing) >= KEBA_READ_GAP_S - FLOAT_SLACK_S
    assert max(spacing) < 5.0  # paced, not stalled
    write_index = next(i for i, r in enumerate(arrivals) if r.write)
    assert arrivals[write_index].address == 5018 and write_index > 0
    assert arrivals[write_index].at - arrivals[write_index - 1].at >= KEBA_READ_GAP_S - FLOAT_SLACK_S

    # Meanwhile the unpaced generic charger kept its 250 ms rhythm.
    window = (arrivals[0].at, arrivals[-1].at)
    times = [at for at, _record in published.of("generic") if window[0] <= at <= window[1]]
    record_gaps = gaps([ArrivedRequest(at, 0, 0, 0, False) for at in times])
    print(
        f"generic while the KEBA was paced: {len(times)} records in {window[1] - window[0]:.1f} s, "
        f"median gap {statistics.median(record_gaps):.3f} s, max {max(record_gaps):.3f} s"
    )
    # Its 250 ms interval kept (a charger slowed by the KEBA's pacing gets ~0.5 s, half the records).
    assert len(times) >= 0.6 * (window[1] - window[0]) / 0.25
    assert statistics.median(record_gaps) < 1.5 * 0.25
    assert max(record_gaps) < 2.0


async def test_writes_wait_for_the_write_gap_without_busy_waiting() -> None:
    """write, read, write, write on one connection (pacing 100 ms / 1000 ms): the server sees the gaps."""
    waits: list[float] = []

    async def recording_wait(stop: asyncio.Event, timeout_s: float) -> bool:
        waits.append(timeout_s)
        return await wait_unless_stopped(stop, timeout_s)

    register = KEBA.register("set_failsafe_timeout")
    async with SimulatorFleet(KEBA, 1, base_port=0, seed=13) as fleet:
        sim = fleet.charge_points[0]
        words = encode_for_write(register, sim.register_values()["failsafe_timeout"])
        connection = ChargePointConnection(
            "127.0.0.1", sim.port, KEBA.default_unit_id, 2.0, pacing=Pacing(100, 1000), wait=recording_wait
        )
        await connection.ensure_connected()
        try:
            await connection.write_registers(register.address, words)
            await connection.read(plan_reads(KEBA, ("fast",))[0])
            await connection.write_registers(register.address, words)
            await connection.write_registers(register.address, words)
        finally:
            await connection.close()
    arrivals = sim.requests_received
    assert [r.write for r in arrivals] == [True, False, True, True]
    first_write, read, second_write, third_write = (r.at for r in arrivals)
    print(f"write gaps {second_write - first_write:.3f} s, {third_write - second_write:.3f} s")
    assert read - first_write >= 0.1 - FLOAT_SLACK_S
    assert second_write - first_write >= 1.0 - FLOAT_SLACK_S
    assert third_write - second_write >= 1.0 - FLOAT_SLACK_S
    assert third_write - first_write < 6.0
    # One wait per request that had to wait, each at most its gap: no polling loop.
    assert len(waits) == 3 and all(0 < w <= 1.0 for w in waits)


async def test_stop_ends_a_pending_pace_wait_at_once() -> None:
    """A charger paced at 30 s between requests: stop while its second read waits ends the loop now."""
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=14) as fleet:
        sim = fleet.charge_points[0]
        config = ChargePointConfig(
            slug="slow", site="site", host="127.0.0.1", port=sim.port, unit_id=1, interval_ms=1000,
            profile=GENERIC, pacing=Pacing(30_000, 0),
        )  # fmt: skip
        published, stop = TimedRecords(), asyncio.Event()
        task = asyncio.create_task(ChargePointPoller(config, published).run(stop))
        try:
            await wait_for(lambda: len(sim.requests_received) == 1, what="the first read")
        finally:
            stop.set()
            started = time.monotonic()
            await within(task, 3)
        stopped_s = time.monotonic() - started
    print(f"stopped {stopped_s * 1000:.0f} ms after stop was set")
    assert stopped_s < 2.0
    assert len(sim.requests_received) == 1  # the paced read was never sent
    assert published.records == []  # a half-read poll is abandoned, not published


async def test_probe_honours_the_profile_pacing() -> None:
    spec = dataclasses.replace(KEBA, request_gap_ms=150)
    async with SimulatorFleet(spec, 1, base_port=0, seed=15) as fleet:
        sim: SimulatedChargePoint = fleet.charge_points[0]
        result = await probe("127.0.0.1", sim.port, spec.default_unit_id, spec)
    spacing = gaps(sim.requests_received)
    assert result.errors == []
    assert len(spacing) == result.reads - 1 == 22
    assert min(spacing) >= 0.15 - FLOAT_SLACK_S
    assert result.paced_ms > 0


@pytest.mark.django_db(transaction=True)
async def test_relaxed_charge_point_reads_back_to_back_and_a_pacing_change_restarts_it(site, quick_reload) -> None:
    """An operator relaxes a KEBA (evcc reads it back to back); removing the override paces it again."""
    keba_profile = await sync_to_async(shipped_profile)("keba-p30")
    async with SimulatorFleet(KEBA, 1, base_port=0, seed=16) as fleet:
        sim = fleet.charge_points[0]
        await sync_to_async(make_charge_point)(
            site, keba_profile, "keba", sim.port, unit_id=KEBA.default_unit_id, poll_interval_ms=20_000,
            request_gap_ms=0, write_gap_ms=0,
        )  # fmt: skip
        [config] = await sync_to_async(load_configs)()
        assert config.pacing == Pacing(0, 0)
        published, stop = TimedRecords(), asyncio.Event()
        task = asyncio.create_task(Poller(published).run(stop))
        try:
            await wait_for(lambda: published.of("keba"), timeout_s=30, what="a relaxed KEBA poll")
            relaxed = list(sim.requests_received)
            await ChargePoint.objects.filter(slug="keba").aupdate(request_gap_ms=None, write_gap_ms=None)
            await wait_for(lambda: len(published.of("keba")) >= 2, timeout_s=60, what="the restarted, paced poll")
            paced = sim.requests_received[len(relaxed) :]
        finally:
            stop.set()
            await within(task, 10)
    # Relaxed: the 23 reads (fast + slow) and the heartbeat write of one poll, far quicker than 0.5 s apart.
    assert len(relaxed) == 24
    assert relaxed[-1].at - relaxed[0].at < 23 * KEBA_READ_GAP_S / 2
    # Paced again after the reload restarted the loop: the new poll's requests are 0.5 s apart.
    assert len(paced) >= 15
    assert min(gaps(paced)) >= KEBA_READ_GAP_S - FLOAT_SLACK_S


# --- admin: how long a poll takes, and an interval that cannot fit it ----------------------------


def keba_charge_point(site, **fields) -> ChargePoint:
    values = {"slug": "keba", "name": "KEBA", "host": "10.0.0.9", "unit_id": 255, "poll_interval_ms": 1000}
    return ChargePoint(site=site, profile=shipped_profile("keba-p30"), **(values | fields))


def test_a_poll_interval_shorter_than_a_paced_poll_is_refused(site) -> None:
    with pytest.raises(ValidationError) as caught:
        keba_charge_point(site).full_clean()
    [message] = caught.value.message_dict["poll_interval_ms"]
    # 15 fast reads + 1 heartbeat write, each 0.5 s (docs/profiles.md table; keba_v107_code).
    assert "one poll takes 8.0 s (15 reads + 1 heartbeat write, 500 ms apart)" in message
    assert "at least 8 s" in message and "slow group" in message and "relax the pacing" in message
    keba_charge_point(site, poll_interval_ms=10_000).full_clean()


@pytest.mark.parametrize("fields", [{"request_gap_ms": 0, "write_gap_ms": 0}, {"enabled": False}])
def test_relaxed_or_disabled_charge_points_can_keep_a_short_interval(site, fields: dict) -> None:
    keba_charge_point(site, **fields).full_clean()


@pytest.mark.django_db
def test_admin_form_shows_the_paced_poll_and_refuses_what_cannot_fit(admin_client, site) -> None:
    profile = shipped_profile("keba-p30")
    form = {
        "slug": "keba", "name": "KEBA", "site": site.pk, "host": "10.0.0.9", "port": 502, "unit_id": 255,
        "profile": profile.pk, "poll_interval_ms": 1000, "enabled": "on", "priority": 0, "wiring": "L123",
    }  # fmt: skip
    refused = admin_client.post(reverse("admin:gateway_chargepoint_add"), form)
    assert refused.status_code == 200
    assert "one poll takes 8.0 s" in refused.content.decode()
    assert not ChargePoint.objects.filter(slug="keba").exists()

    relaxed = admin_client.post(reverse("admin:gateway_chargepoint_add"), form | {"request_gap_ms": 0})
    assert relaxed.status_code == 302
    cp = ChargePoint.objects.get(slug="keba")
    assert (cp.request_gap_ms, cp.write_gap_ms) == (0, None)

    listing = admin_client.get(reverse("admin:gateway_chargepoint_changelist")).content.decode()
    assert "15 reads back to back, writes 5000 ms apart (pacing set on this charge point)" in listing
    change = admin_client.get(reverse("admin:gateway_chargepoint_change", args=[cp.pk])).content.decode()
    assert "evcc reads a KEBA" in change  # the help text of the relax option

    disabled = admin_client.post(
        reverse("admin:gateway_chargepoint_add"),
        form | {"slug": "keba-2", "host": "10.0.0.10", "enabled": ""},
        follow=True,
    )
    assert "enabling it will be refused" in disabled.content.decode()
    assert ChargePoint.objects.filter(slug="keba-2", enabled=False).exists()


@pytest.mark.django_db
def test_admin_lists_the_poll_time_of_a_profile_and_a_charge_point(admin_client, site) -> None:
    keba_charge_point(site, poll_interval_ms=10_000).save()
    listing = admin_client.get(reverse("admin:gateway_chargepoint_changelist")).content.decode()
    assert "8.0 s (15 reads + 1 heartbeat write, 500 ms apart); the slow group adds 4.0 s every 5 min" in listing
    profiles = admin_client.get(reverse("admin:gateway_deviceprofile_changelist")).content.decode()
    assert "8.0 s (15 reads + 1 heartbeat write, 500 ms apart)" in profiles
    assert poll_time(KEBA, Pacing(500, 5000), 10_000).ms == 8000


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"request_gap_ms": 60_001}, "request_gap_ms", "At most 60000 ms."),
        ({"pacing_source": ""}, "pacing_source", "Cite where the vendor asks for this pacing."),
        ({"write_gap_ms": 11_000}, "write_gap_ms", "A heartbeat is written more often than this gap allows."),
    ],
)
def test_profile_pacing_is_validated(fields: dict, field: str, message: str) -> None:
    profile = shipped_profile("keba-p30")
    for name, value in fields.items():
        setattr(profile, name, value)
    with pytest.raises(ValidationError) as caught:
        profile.full_clean()
    assert message in caught.value.message_dict[field]


@pytest.mark.django_db
def test_the_demo_polls_its_keba_slowly_enough_for_its_pacing() -> None:
    from gateway.demo import ensure_demo_fleet

    for slug in ("alfen-eve", "abb-terra-ac", "keba-p30"):
        shipped_profile(slug)
    ensure_demo_fleet(3, 40_000)
    keba = ChargePoint.objects.get(profile__slug="keba-p30")
    assert keba.poll_interval_ms == 10_000  # 8 s at 0.5 s a request, with headroom
    keba.full_clean()
    assert ChargePoint.objects.get(profile__slug="alfen-eve").poll_interval_ms == 1000  # unpaced: unchanged


@pytest.mark.django_db
def test_a_profile_edit_warns_about_charge_points_its_pacing_no_longer_fits(admin_client, site) -> None:
    from tests.test_profile_admin import profile_form

    profile = DeviceProfile.objects.create(slug="custom", name="Custom charger")
    make_charge_point(site, profile, "cp-custom", 1502, poll_interval_ms=1000)
    form = profile_form(profile, [{"name": "a", "address": 0}], [], request_gap_ms=2000, pacing_source="test doc")
    response = admin_client.post(reverse("admin:gateway_deviceprofile_change", args=[profile.pk]), form, follow=True)
    page = html.unescape(response.content.decode())
    assert "Charge point cp-custom: At this charger's pacing one poll takes 2.0 s (1 read, 2000 ms apart)" in page
    profile.refresh_from_db()
    assert profile.request_gap_ms == 2000  # saved: the warning names the charge points to fix


@pytest.mark.django_db
def test_probe_command_paces_as_asked_and_refuses_an_absurd_gap() -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    shipped_profile("keba-p30")
    with SimulatorFleet(KEBA, 1, base_port=0, seed=17).run_in_thread() as fleet:
        sim = fleet.charge_points[0]
        out = StringIO()
        call_command("probe", f"127.0.0.1:{sim.port}", "--profile", "keba-p30", "--request-gap-ms", "100", stdout=out)
        spacing = gaps(sim.requests_received)
        with pytest.raises(CommandError, match="--request-gap-ms must be between 0 and 60000"):
            call_command("probe", f"127.0.0.1:{sim.port}", "--profile", "keba-p30", "--request-gap-ms", "70000")
    assert "23 reads in" in out.getvalue() and "waiting: 100 ms between requests" in out.getvalue()
    assert len(spacing) == 22 and min(spacing) >= 0.1 - FLOAT_SLACK_S
    assert statistics.median(spacing) < KEBA_READ_GAP_S  # the operator's 100 ms, not the vendor's 500 ms
