"""The lean simulator server answers as the pymodbus one does; --processes splits a fleet; no 1,000 cap."""

import asyncio
import logging
import math
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
from django.core.management import CommandError, call_command
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.constants import ExcCodes

from gateway.choices import Function, PollGroup
from gateway.modbus.planner import plan_reads
from gateway.profiles.spec import ProfileSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.simulator.processes import slice_fleet
from tests.ports import free_port_run

SHIPPED = sorted(SHIPPED_DIR.glob("*.json"))
GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
UNIT = 1
# A small profile with coils and discrete inputs (no shipped charger uses them).
BITS = ProfileSpec.from_dict(
    {
        "slug": "lean-bits",
        "name": "lean-bits",
        "registers": [
            {"name": "state", "address": 0, "data_type": "uint16", "role": "vendor_status", "enum": {"1": "ready"}},
            {"name": "enabled", "address": 0, "data_type": "bool", "function": "coil", "access": "rw"},
            {"name": "plugged", "address": 3, "data_type": "bool", "function": "discrete_input"},
        ],
        "status_rules": [{"register": "state", "code": "1", "iec61851_state": "A", "status": "available"}],
    }
)


def frame(unit: int, pdu: bytes, transaction: int = 1) -> bytes:
    """A Modbus TCP request: MBAP header, then the PDU."""
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


async def exchange(port: int, frames: list[bytes]) -> list[bytes]:
    """Send each frame on one connection and collect each whole answer (or b"" when none comes)."""
    answers: list[bytes] = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in frames:
            writer.write(request)
            try:
                header = await asyncio.wait_for(reader.readexactly(6), 10)  # generous: a loaded machine
                answers.append(header + await reader.readexactly(struct.unpack(">H", header[4:])[0]))
            except (TimeoutError, asyncio.IncompleteReadError):
                answers.append(b"")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()
    return answers


def probe_frames(fleet: SimulatorFleet) -> list[bytes]:
    """Reads in, around and past every served address, odd units, bad requests, and writes of each writable register.

    Not FC 7, 8, 11, 12, 17, 20-24 or 43: pymodbus serves them, the lean server does not (ILLEGAL FUNCTION).
    """
    charge_point = fleet.charge_points[0]
    image = charge_point.image
    frames: list[bytes] = []
    for unit in (*image.unit_ids, 0, 7, 255):
        for (space_unit, function), space in sorted(image.spaces.items()):
            code = {Function.COIL: 1, Function.DISCRETE_INPUT: 2, Function.HOLDING: 3, Function.INPUT: 4}[function]
            starts = sorted(
                space.read_starts | {min(space.readable, default=0) - 1, max(space.readable, default=0) + 1}
            )
            for address in starts:
                for count in (1, 2, 3, 16):
                    if 0 <= address <= 0xFFFF:
                        frames.append(frame(unit, struct.pack(">BHH", code, address, count)))
            for register in space.own if space_unit == unit else ():
                frames.append(frame(unit, struct.pack(">BHH", 6, register.address, 160)))
                frames.append(frame(unit, struct.pack(">BHH", 6, register.address, 0xFFFF)))
                words = struct.pack(f">{register.count}H", *([16] * register.count))
                frames.append(
                    frame(unit, struct.pack(">BHHB", 16, register.address, register.count, len(words)) + words)
                )
                frames.append(frame(unit, struct.pack(">BHH", 5, register.address, 0xFF00)))
        for code in (1, 2, 3, 4):
            frames += [frame(unit, struct.pack(">BHH", code, 0, count)) for count in (0, 126, 2001)]
            frames.append(frame(unit, struct.pack(">BHH", code, 0xFFFF, 2)))
        frames.append(frame(unit, struct.pack(">BHHB", 16, 0, 0, 0)))  # no registers
        frames.append(frame(unit, struct.pack(">BHHBH", 16, 0, 1, 4, 0)))  # byte count does not match
        frames += [frame(unit, bytes(pdu)) for pdu in ([0x63, 0, 0], [0x83, 0, 0], [3, 0], [0x80])]
    return frames


async def read_planned_blocks(port: int, spec: ProfileSpec, unit_id: int) -> list[list[int] | list[bool]]:
    """Every block the poller plans for the profile, read with pymodbus' client."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await client.connect()
    read = {
        Function.HOLDING: client.read_holding_registers,
        Function.INPUT: client.read_input_registers,
        Function.COIL: client.read_coils,
        Function.DISCRETE_INPUT: client.read_discrete_inputs,
    }
    blocks: list[list[int] | list[bool]] = []
    try:
        for request in plan_reads(spec, (PollGroup.FAST, PollGroup.SLOW)):
            unit = unit_id if request.unit_id is None else request.unit_id
            response = await read[request.function](request.address, count=request.count, device_id=unit)
            assert not response.isError(), (request, response)
            bits = request.function in (Function.COIL, Function.DISCRETE_INPUT)
            blocks.append(response.bits[: request.count] if bits else response.registers)
    finally:
        client.close()
    return blocks


def quiet_fleet(spec: ProfileSpec, *, lean: bool, seed: int = 3) -> SimulatorFleet:
    """One charge point that does not tick (its state changes only by writes), as lean or pymodbus."""
    fleet = SimulatorFleet(spec, 1, base_port=0, seed=seed, tick_s=1e6, lean=lean)
    fleet.charge_points[0].behaviour.mean_fault_interval_s = math.inf
    return fleet


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
async def test_lean_answers_byte_for_byte_like_pymodbus(path: object) -> None:
    spec = read_spec_file(path)  # type: ignore[arg-type]
    blocks, answers = {}, {}
    for lean in (False, True):
        async with quiet_fleet(spec, lean=lean) as fleet:
            charge_point = fleet.charge_points[0]
            blocks[lean] = await read_planned_blocks(charge_point.port, spec, charge_point.unit_id)
            # Then the raw bytes of good, refused and malformed requests, writes included (same order
            # on both, so both charge points go through the same states).
            answers[lean] = await exchange(charge_point.port, probe_frames(fleet))
            blocks[lean] += await read_planned_blocks(charge_point.port, spec, charge_point.unit_id)
    assert blocks[True] == blocks[False]
    assert len(answers[True]) == len(answers[False]) > 100
    differing = [
        (i, a.hex(), b.hex()) for i, (a, b) in enumerate(zip(answers[False], answers[True], strict=True)) if a != b
    ]
    assert differing == []
    assert all(answers[True])  # every request was answered


@pytest.fixture
async def lean_generic() -> AsyncIterator[SimulatorFleet]:
    async with quiet_fleet(GENERIC, lean=True) as fleet:
        yield fleet


async def test_lean_exception_codes(lean_generic: SimulatorFleet) -> None:
    port = lean_generic.charge_points[0].port
    requests = {
        "unmapped address": frame(UNIT, struct.pack(">BHH", 3, 90, 1)),
        "past the map": frame(UNIT, struct.pack(">BHH", 3, 14, 4)),
        "no input registers": frame(UNIT, struct.pack(">BHH", 4, 0, 1)),
        "unknown unit": frame(9, struct.pack(">BHH", 3, 0, 1)),
        "out of range value": frame(UNIT, struct.pack(">BHH", 6, 15, 330)),
        "read-only register": frame(UNIT, struct.pack(">BHH", 6, 0, 1)),
        "function pymodbus knows": frame(UNIT, bytes([43, 14, 1, 0])),
        "unknown function": frame(UNIT, bytes([0x63, 0, 0])),
        "quantity 0": frame(UNIT, struct.pack(">BHH", 3, 0, 0)),
    }
    answers = dict(zip(requests, await exchange(port, list(requests.values())), strict=True))
    pdus = {name: answer[7:].hex() for name, answer in answers.items()}
    assert pdus == {
        "unmapped address": "8302",
        "past the map": "8302",
        "no input registers": "8402",
        "unknown unit": "8304",
        "out of range value": "8603",
        "read-only register": "8602",
        "function pymodbus knows": "ab01",
        "unknown function": "8001",
        "quantity 0": "8001",
    }
    assert answers["unknown unit"][6] == 9  # the unit id is echoed
    assert lean_generic.charge_points[0].last_writes == []


async def test_lean_writes_take_effect_and_read_back(lean_generic: SimulatorFleet) -> None:
    charge_point = lean_generic.charge_points[0]
    client = AsyncModbusTcpClient("127.0.0.1", port=charge_point.port, timeout=2, retries=0)
    assert await client.connect()
    try:
        assert not (await client.write_register(15, 100, device_id=UNIT)).isError()  # 10.0 A
        assert (await client.read_holding_registers(15, count=1, device_id=UNIT)).registers == [100]
        assert charge_point.behaviour.max_current_a == 10.0
        assert not (await client.write_registers(15, [160], device_id=UNIT)).isError()  # FC16
        assert (await client.read_holding_registers(0, count=16, device_id=UNIT)).registers[15] == 160
        assert [(w.register, w.value) for w in charge_point.last_writes] == [
            ("max_current", 10.0),
            ("max_current", 16.0),
        ]
        assert [r.function_code for r in charge_point.requests_received] == [6, 3, 16, 3]
    finally:
        client.close()

    async with quiet_fleet(BITS, lean=True) as fleet:
        sim = fleet.charge_points[0]
        client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            assert (await client.read_coils(0, count=1, device_id=UNIT)).bits[0] is False
            assert not (await client.write_coil(0, True, device_id=UNIT)).isError()
            assert (await client.read_coils(0, count=1, device_id=UNIT)).bits[0] is True
            assert [(w.register, w.value) for w in sim.last_writes] == [("enabled", True)]
            sim.set_value("plugged", True)
            assert (await client.read_discrete_inputs(3, count=1, device_id=UNIT)).bits[0] is True
            refused = await client.read_discrete_inputs(9, count=1, device_id=UNIT)
            assert refused.isError() and refused.exception_code == ExcCodes.ILLEGAL_ADDRESS
        finally:
            client.close()


async def test_garbled_frame_closes_only_that_connection(
    lean_generic: SimulatorFleet, caplog: pytest.LogCaptureFixture
) -> None:
    port = lean_generic.charge_points[0].port
    good = frame(UNIT, struct.pack(">BHH", 3, 0, 16))
    bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # A frame split across two sends is answered once it is whole.
        writer.write(good[:5])
        await writer.drain()
        await asyncio.sleep(0)
        writer.write(good[5:])
        assert len(await asyncio.wait_for(reader.readexactly(41), 2)) == 41

        with caplog.at_level(logging.WARNING, logger="gateway.simulator.lean"):
            # A protocol id other than 0, then (on a new connection) a length no frame has.
            bad_writer.write(struct.pack(">HHHB", 1, 7, 6, UNIT) + good[7:] + good)
            assert await asyncio.wait_for(bad_reader.read(), 2) == b""  # closed, nothing answered
            bad_writer.close()
            bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", port)
            bad_writer.write(struct.pack(">HHHB", 1, 0, 300, UNIT) + b"\x03" * 300)
            assert await asyncio.wait_for(bad_reader.read(), 2) == b""
        assert len([r for r in caplog.records if "garbled frame" in r.getMessage()]) == 2  # once per connection

        writer.write(good)  # the other connection still works
        assert len(await asyncio.wait_for(reader.readexactly(41), 2)) == 41
        # A truncated frame, then the client goes away: the server keeps serving.
        _, cut_writer = await asyncio.open_connection("127.0.0.1", port)
        cut_writer.write(good[:9])
        cut_writer.close()
        writer.write(good)
        assert len(await asyncio.wait_for(reader.readexactly(41), 2)) == 41
    finally:
        writer.close()
        bad_writer.close()


# --- manage.py simulate --lean --processes ------------------------------------------------------


def answers_read(port: int) -> bool:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        if not client.connect():
            return False
        response = client.read_holding_registers(0, count=16, device_id=UNIT)
        return not response.isError() and len(response.registers) == 16
    finally:
        client.close()


def in_background(action: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run `action` in a thread (while the main thread runs the command); its failure is returned."""
    failures: list[BaseException] = []

    def body() -> None:
        try:
            action()
        except BaseException as exc:  # reported by the test
            failures.append(exc)
            os.kill(os.getpid(), signal.SIGTERM)  # do not leave the command running

    thread = threading.Thread(target=body, name="lean-test-driver")
    thread.start()
    return thread, failures


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_slices_are_contiguous_and_even() -> None:
    assert [(s.first, s.count) for s in slice_fleet(10, 3)] == [(0, 4), (4, 3), (7, 3)]
    assert [(s.first, s.count) for s in slice_fleet(2, 4)] == [(0, 1), (1, 1)]


@pytest.mark.django_db
def test_processes_serve_every_port_and_stop_on_sigterm(generic_profile: object) -> None:
    base = free_port_run(5)
    ports = range(base, base + 5)

    def drive() -> None:
        wait_until(lambda: all(answers_read(port) for port in ports), "all five ports")
        assert len(multiprocessing.active_children()) >= 2
        os.kill(os.getpid(), signal.SIGTERM)

    thread, failures = in_background(drive)
    call_command("simulate", "--lean", "--processes", "2", "--count", "5", "--base-port", str(base), "--seed", "1")
    thread.join(10)
    assert failures == []
    assert not [child for child in multiprocessing.active_children() if child.name.startswith("simulator-")]
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


@pytest.mark.django_db
def test_a_dead_worker_is_reported(generic_profile: object, caplog: pytest.LogCaptureFixture) -> None:
    base = free_port_run(4)

    def drive() -> None:
        wait_until(lambda: all(answers_read(port) for port in range(base, base + 4)), "all four ports")
        victim = next(c for c in multiprocessing.active_children() if c.name == "simulator-2")
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]

    thread, failures = in_background(drive)
    with (
        caplog.at_level(logging.ERROR, logger="gateway"),
        pytest.raises(
            CommandError, match=rf"simulator-2 \(pid \d+, ports {base + 2}\.\.{base + 3}\) exited with code -9"
        ),
    ):
        call_command("simulate", "--lean", "--processes", "2", "--count", "4", "--base-port", str(base))
    thread.join(10)
    assert failures == []
    assert any("simulator-2" in r.getMessage() and "code -9" in r.getMessage() for r in caplog.records)
    assert not [child for child in multiprocessing.active_children() if child.name.startswith("simulator-")]


@pytest.mark.django_db
def test_simulate_accepts_1500_charge_points(generic_profile: object, caplog: pytest.LogCaptureFixture) -> None:
    base = free_port_run(1500)
    with caplog.at_level(logging.INFO, logger="gateway"):
        call_command("simulate", "--lean", "--count", "1500", "--base-port", str(base), "--run-for", "0.5")
    assert any(
        r.getMessage().startswith(f"sim-cp-001..sim-cp-1500: 1500 charge points on 127.0.0.1:{base}..{base + 1499}")
        for r in caplog.records
    )


def test_too_few_open_files_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.management.commands.simulate.raise_open_file_limit", lambda: 256)
    with pytest.raises(
        CommandError, match=r"1000 charge points in one process need about 2064 open files.*limit is 256"
    ):
        call_command("simulate", "--lean", "--count", "2000", "--processes", "2", "--base-port", "20000")
