"""Commands end to end, direct and edge: the service → Kafka → (bridge → MQTT →) the poller →
a simulated charger of every shipped profile that supports the command → read-back → result →
the consumer → the audit row and the charge point page's socket.

Everything real and in this process's event loop: the simulators, run_poller, run_bridge and
run_consumer (the services the management commands run), the embedded Kafka and, on the edge
path, a Mosquitto of the test's own. The fault test (kill -9 between write and result) is in
tests/test_poller_commands_restart.py; the words on the wire are checked against the golden
tables in tests/test_command_execute.py.
"""

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission, User

from evdash.asgi import application
from gateway import services
from gateway.choices import CommandStatus
from gateway.commands.service import send_command
from gateway.models import ChargePoint, Command, LatestTelemetry
from gateway.mqtt.bridge import run_bridge
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import read_spec_file, shipped_profile_files
from gateway.simulator.fleet import SimulatorFleet
from tests.conftest import CONNECT_TIMEOUT_S, make_charge_point, session_cookie_headers, shipped_profile
from tests.mosquitto import Mosquitto
from tests.mosquitto import User as MqttUser
from tests.processes import wait_until_async

SHIPPED = [read_spec_file(path) for path in shipped_profile_files()]
LIMIT_A = 10.0
# A KEBA waits 0.5 s between reads and 5 s between writes (its pacing): a command can wait for a
# whole paced poll and the write gap, then settle; the others answer within a second or two.
RESULT_TIMEOUT_S = 45.0
EDGE_USER = MqttUser("edge-Secr3t!pw", ("readwrite evdash/#",))


def supporting(*actions: str) -> list[ProfileSpec]:
    return [
        spec
        for spec in SHIPPED
        if all((command := spec.command(action)) is not None and command.supported for action in actions)
    ]


@pytest.fixture
def operator(db: None) -> User:
    user = User.objects.create_user("operator", password="not-used-here")
    user.user_permissions.add(Permission.objects.get(codename="send_command"))
    return User.objects.get(pk=user.pk)  # fresh: permissions are cached per instance


@contextlib.asynccontextmanager
async def running_chain(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """run_consumer and run_poller (and on the edge path Mosquitto and run_bridge) until the block ends."""
    stop = asyncio.Event()
    tasks = []
    with contextlib.ExitStack() as stack:
        if path == "edge":
            broker = stack.enter_context(Mosquitto(tmp_path / "mosquitto", users={"edge": EDGE_USER}))
            monkeypatch.setitem(settings.EVDASH, "MQTT_URL", broker.url("edge", tls=False))
            monkeypatch.setitem(settings.EVDASH, "BRIDGE_CLIENT_ID", f"bridge-{tmp_path.name[-20:]}")
            tasks.append(asyncio.create_task(run_bridge(stop), name="bridge"))
        tasks.append(asyncio.create_task(services.run_consumer(stop), name="consumer"))
        output = "mqtt" if path == "edge" else "kafka"
        tasks.append(
            asyncio.create_task(services.run_poller(stop, output=output, poller_id=f"e2e-{path}"), name="poller")
        )
        try:
            yield
        finally:
            stop.set()
            done, _ = await asyncio.wait(tasks, timeout=30)
            for task in tasks:
                if task not in done:
                    task.cancel()
            errors = [task.exception() for task in done if not task.cancelled() and task.exception()]
            assert not errors, errors


async def charging_fleet(
    specs: list[ProfileSpec], site, *, relaxed: bool = False
) -> tuple[SimulatorFleet, list[ChargePoint]]:
    """One started simulator per profile, each with a car charging, and its charge point in the database.

    relaxed: no vendor pacing (as a charge point's override allows), for a test of what commands do
    rather than of when a paced KEBA gets its turn, which the limit tests keep.
    """
    fleet = SimulatorFleet.mixed(specs, len(specs), base_port=0, seed=3, speedup=5.0)
    await fleet.start()
    charge_points = []
    pacing = {"request_gap_ms": 0, "write_gap_ms": 0} if relaxed else {}
    for spec, sim in zip(specs, fleet.charge_points, strict=True):
        sim.behaviour.mean_fault_interval_s = math.inf  # no random fault in the middle of a test
        sim.connect_vehicle(phases=3)
        profile = await sync_to_async(shipped_profile)(spec.slug)
        charge_points.append(
            await sync_to_async(make_charge_point)(
                site, profile, f"cp-{spec.slug}", sim.port, unit_id=sim.unit_id, **pacing
            )
        )
    await wait_until_async(
        lambda: all(sim.behaviour.status == "charging" for sim in fleet.charge_points), 30, "every car charging"
    )
    return fleet, charge_points


async def wait_for_result(command_id: object, timeout_s: float) -> Command:
    """The command once its result is stored (service.wait_for_result's loop, without holding
    the one thread that every sync_to_async call of this process shares, the consumer's included)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (command := await Command.objects.aget(pk=command_id)).status == CommandStatus.PENDING:
        assert asyncio.get_running_loop().time() < deadline, f"no result for {command} within {timeout_s} s"
        await asyncio.sleep(0.05)
    return command


async def latest(charge_point: ChargePoint) -> dict | None:
    row = await LatestTelemetry.objects.filter(charge_point=charge_point).afirst()
    return None if row is None else row.record


async def wait_for_records(charge_points: list[ChargePoint], condition, what: str) -> dict[str, dict]:
    """The latest record of each charge point, once each satisfies `condition`."""
    records: dict[str, dict] = {}

    async def check() -> bool:
        for cp in charge_points:
            record = await latest(cp)
            if record is not None and condition(record):
                records[cp.slug] = record
        return len(records) == len(charge_points)

    deadline = asyncio.get_running_loop().time() + RESULT_TIMEOUT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            missing = {cp.slug: await latest(cp) for cp in charge_points if cp.slug not in records}
            raise AssertionError(f"timed out waiting for {what}; the latest records of those missing: {missing}")
        await asyncio.sleep(0.2)
    return records


async def command_message(socket: WebsocketCommunicator, command_id: str, timeout_s: float) -> dict:
    """The page's first "command" message for this command that is no longer pending."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"no final command message for {command_id} on the page's socket"
        message = await socket.receive_json_from(timeout=remaining)
        command = message.get("command") or {}
        if message["type"] == "command" and command["id"] == command_id and command["status"] != "pending":
            return command


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["direct", "edge"])
async def test_a_limit_is_applied_and_verified_on_every_profile_that_supports_it(
    path: str, kafka, site, operator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = supporting("set_current_limit")
    assert len(specs) >= 7, [spec.slug for spec in specs]  # every vendor profile can take a limit
    fleet, charge_points = await charging_fleet(specs, site)
    try:
        async with running_chain(path, tmp_path, monkeypatch):
            # The poller reads and publishes: every charge point is on the dashboard, charging.
            await wait_for_records(charge_points, lambda r: r["status"] == "charging", "charging records")
            headers = await sync_to_async(session_cookie_headers)(operator)
            page = WebsocketCommunicator(application, f"/ws/chargepoints/{charge_points[0].slug}/", headers=headers)
            assert (await page.connect(timeout=CONNECT_TIMEOUT_S))[0]
            try:
                commands = [
                    await sync_to_async(send_command)(cp, "set_current_limit", LIMIT_A, user=operator, via="web")
                    for cp in charge_points
                ]
                results = [await wait_for_result(command.id, RESULT_TIMEOUT_S) for command in commands]
                on_page = await command_message(page, str(commands[0].id), RESULT_TIMEOUT_S)
            finally:
                await page.disconnect()
            # The records that follow carry the operator's limit, and the currents under it.
            records = await wait_for_records(charge_points, limited, "records with the limit and lower currents")
    finally:
        await fleet.stop()

    for spec, sim, result in zip(specs, fleet.charge_points, results, strict=True):
        command = spec.command("set_current_limit")
        assert result.status == CommandStatus.APPLIED, f"{spec.slug}: {result.reason_code}: {result.reason}"
        if not command.verify_values:  # verified by the limit itself (Webasto: by its state, no register shows it)
            assert result.read_back == pytest.approx(LIMIT_A, abs=max(command.tolerance, 1e-6)), spec.slug
        assert result.latency_ms is not None and result.latency_ms > 0
        # The car draws at most the limit now (the simulated charger honoured the write).
        assert max(sim.behaviour.currents_a) <= LIMIT_A + 1e-6, (spec.slug, sim.behaviour.currents_a)
    assert on_page["status"] == CommandStatus.APPLIED
    assert on_page["read_back"] == pytest.approx(LIMIT_A, abs=0.01)
    for spec, cp in zip(specs, charge_points, strict=True):
        if spec.register_for("current_limit_a") is not None:
            # What the charger itself reports in force agrees with what the operator set.
            assert records[cp.slug]["values"]["current_limit_a"] == pytest.approx(LIMIT_A, abs=0.01), spec.slug


def limited(record: dict) -> bool:
    """A record with the operator's limit, whose currents (or power) are within it."""
    values = record["values"]
    currents = [values[f"current_l{n}_a"] for n in (1, 2, 3) if values[f"current_l{n}_a"] is not None]
    if record["active_limit_a"] != LIMIT_A:
        return False
    if currents:
        return max(currents) <= LIMIT_A + 0.05
    # No current registers (Mennekes): the power of at most 10 A on three phases.
    return values["power_w"] is not None and values["power_w"] <= 3 * LIMIT_A * 240


@pytest.mark.django_db(transaction=True)
async def test_pause_and_resume_on_every_profile_that_supports_them(
    kafka, site, operator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = supporting("pause", "resume")
    assert specs, "no shipped profile supports pause and resume"
    fleet, charge_points = await charging_fleet(specs, site, relaxed=True)
    try:
        async with running_chain("direct", tmp_path, monkeypatch):
            await wait_for_records(charge_points, lambda r: r["status"] == "charging", "charging records")
            paused = [await sync_to_async(send_command)(cp, "pause", user=operator) for cp in charge_points]
            for spec, command in zip(specs, paused, strict=True):
                result = await wait_for_result(command.id, RESULT_TIMEOUT_S)
                assert result.status == CommandStatus.APPLIED, f"{spec.slug}: {result.reason}"
            assert all(max(sim.behaviour.currents_a) == 0 for sim in fleet.charge_points)
            await wait_for_records(charge_points, lambda r: r["status"] != "charging", "records not charging")
            resumed = [await sync_to_async(send_command)(cp, "resume", user=operator) for cp in charge_points]
            for spec, command in zip(specs, resumed, strict=True):
                result = await wait_for_result(command.id, RESULT_TIMEOUT_S)
                assert result.status == CommandStatus.APPLIED, f"{spec.slug}: {result.reason}"
            await wait_for_records(charge_points, lambda r: r["status"] == "charging", "charging again")
    finally:
        await fleet.stop()


@pytest.mark.django_db(transaction=True)
async def test_refusals_come_back_with_their_reason_through_the_chain(
    kafka, site, operator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A charger that ignores the write, an offline charge point and an expired command: each
    fails with its reason, well within the expiry, and nothing hangs."""
    generic = next(spec for spec in SHIPPED if spec.slug == "generic-ev-charger")
    fleet, (ignoring,) = await charging_fleet([generic], site)
    fleet.charge_points[0].set_ignore_writes(True)
    profile = await sync_to_async(shipped_profile)(generic.slug)
    offline_port = fleet.charge_points[0].port + 1 if fleet.charge_points[0].port < 65535 else 1
    offline = await sync_to_async(make_charge_point)(site, profile, "cp-offline", offline_port)
    try:
        async with running_chain("direct", tmp_path, monkeypatch):
            await wait_for_records([ignoring], lambda r: r["status"] == "charging", "a charging record")
            await wait_for_records([offline], lambda r: r["status"] == "offline", "an offline record")
            mismatch = await sync_to_async(send_command)(ignoring, "set_current_limit", LIMIT_A, user=operator)
            unreachable = await sync_to_async(send_command)(offline, "set_current_limit", LIMIT_A, user=operator)
            expired = await sync_to_async(send_command)(
                ignoring, "set_current_limit", LIMIT_A, user=operator, expiry_s=0.001
            )
            outcomes = {
                name: await wait_for_result(command.id, 20.0)
                for name, command in (("mismatch", mismatch), ("offline", unreachable), ("expired", expired))
            }
    finally:
        await fleet.stop()
    assert {name: (c.status, c.reason_code) for name, c in outcomes.items()} == {
        "mismatch": ("failed", "readback_mismatch"),
        "offline": ("failed", "offline"),
        "expired": ("failed", "expired"),
    }, {name: c.reason for name, c in outcomes.items()}
    assert "10" in outcomes["mismatch"].reason  # says what was expected and what was read
    assert max(fleet.charge_points[0].behaviour.currents_a) > LIMIT_A  # the ignoring charger kept drawing
