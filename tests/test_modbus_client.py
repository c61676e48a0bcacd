"""The lean Modbus TCP client against scripted servers: framing, exceptions, garbage, timeouts."""

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.choices import Function
from gateway.modbus.connection import ChargePointConnection, ConnectionFailed, DeviceException, ModbusError
from gateway.modbus.planner import ReadRequest
from tests.conftest import free_port

Answer = Callable[[int, int, bytes], bytes | None]  # (transaction id, unit id, request PDU) -> raw bytes to send


class ScriptedCharger:
    """A TCP server that answers each Modbus request with whatever `answer` returns (raw bytes)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[int, int, bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _protocol, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                self.requests.append((tid, unit, pdu))
                raw = self.answer(tid, unit, pdu)
                if raw is not None:
                    writer.write(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def registers(tid: int, unit: int, pdu: bytes) -> bytes:
    """A correct answer to a register read: register i holds 1000 + address + i."""
    _function, address, count = struct.unpack(">BHH", pdu[:5])
    words = [1000 + address + i for i in range(count)]
    return frame(tid, unit, struct.pack(f">BB{count}H", pdu[0], 2 * count, *words))


@pytest.fixture
async def charger_factory() -> AsyncIterator[Callable[[Answer], asyncio.Future]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> ScriptedCharger:
        charger = ScriptedCharger(answer)
        charger.server = await asyncio.start_server(charger.serve, "127.0.0.1", 0)
        servers.append(charger.server)
        return charger

    yield start
    for server in servers:
        server.close()


HOLDING = ReadRequest(Function.HOLDING, 100, 3, ())


async def test_reads_registers_and_bits_with_the_units_and_function_codes_asked_for(charger_factory) -> None:
    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        if pdu[0] in (1, 2):  # 10 bits: 1,0,1,1,0,0,0,0 | 1,1
            return frame(tid, unit, bytes((pdu[0], 2, 0b00001101, 0b00000011)))
        return registers(tid, unit, pdu)

    charger = await charger_factory(answer)
    connection = ChargePointConnection("127.0.0.1", charger.port, 7, timeout_s=1)
    await connection.ensure_connected()
    try:
        assert await connection.read(HOLDING) == [1100, 1101, 1102]
        assert await connection.read(ReadRequest(Function.INPUT, 5, 2, (), unit_id=3)) == [1005, 1006]
        bits = await connection.read(ReadRequest(Function.COIL, 0, 10, ()))
        assert bits == [True, False, True, True, False, False, False, False, True, True]
        await connection.write_registers(200, [5])
        await connection.write_registers(300, [1, 2], unit_id=9)
    finally:
        await connection.close()
    functions_and_units = [(pdu[0], unit) for _tid, unit, pdu in charger.requests]
    assert functions_and_units == [(3, 7), (4, 3), (1, 7), (6, 7), (16, 9)]
    assert charger.requests[3][2] == struct.pack(">BHH", 6, 200, 5)
    assert charger.requests[4][2] == struct.pack(">BHHBHH", 16, 300, 2, 4, 1, 2)
    tids = [tid for tid, _unit, _pdu in charger.requests]
    assert len(set(tids)) == len(tids)  # every request its own transaction id


async def test_an_exception_response_is_a_device_exception_and_the_connection_stays(charger_factory) -> None:
    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        if pdu[0] == 3 and struct.unpack(">H", pdu[1:3])[0] == 500:
            return frame(tid, unit, bytes((0x83, 2)))
        if pdu[0] == 6:
            return frame(tid, unit, bytes((0x86, 3)))
        return registers(tid, unit, pdu)

    charger = await charger_factory(answer)
    connection = ChargePointConnection("127.0.0.1", charger.port, 1, timeout_s=1)
    await connection.ensure_connected()
    try:
        with pytest.raises(DeviceException, match=r"ILLEGAL DATA ADDRESS for holding registers 500\.\.501") as error:
            await connection.read(ReadRequest(Function.HOLDING, 500, 2, ()))
        assert error.value.code == 2
        with pytest.raises(DeviceException, match="ILLEGAL VALUE for write to 10"):
            await connection.write_registers(10, [1])
        assert await connection.read(HOLDING) == [1100, 1101, 1102]  # same connection, still in step
    finally:
        await connection.close()
    assert charger.connections == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x12\x34\x00\x05\x01\x03\x02\x00\x01",  # protocol id not 0
        b"\x00\x01\x00\x00\x00\x00",  # length 0 (and a header cut short)
        b"\x00\x01\x00\x00\xff\xff\x01" + b"\x00" * 16,  # length beyond any Modbus frame
        b"\x00\x01\x00\x00\x00\x06\x01\x03\x07\x00\x01\x00",  # byte count disagrees with the data
    ],
)
async def test_a_garbled_answer_drops_the_connection_and_the_next_request_reconnects(
    charger_factory, garbage: bytes
) -> None:
    sent_garbage = False

    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        nonlocal sent_garbage
        if not sent_garbage:
            sent_garbage = True
            return garbage
        return registers(tid, unit, pdu)

    charger = await charger_factory(answer)
    connection = ChargePointConnection("127.0.0.1", charger.port, 1, timeout_s=1)
    await connection.ensure_connected()
    try:
        with pytest.raises(ConnectionFailed):
            await connection.read(HOLDING)
        assert not connection.connected
        await connection.ensure_connected()
        assert await connection.read(HOLDING) == [1100, 1101, 1102]
    finally:
        await connection.close()
    assert charger.connections == 2


async def test_an_answer_with_another_transaction_id_is_not_taken_for_ours(charger_factory) -> None:
    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        stale = registers((tid - 1) & 0xFFFF, unit, struct.pack(">BHH", 3, 0, 3))
        return stale + registers(tid, unit, pdu)  # a stale answer first, then ours in the same segment

    charger = await charger_factory(answer)
    connection = ChargePointConnection("127.0.0.1", charger.port, 1, timeout_s=1)
    await connection.ensure_connected()
    try:
        assert await connection.read(HOLDING) == [1100, 1101, 1102]
        assert await connection.read(HOLDING) == [1100, 1101, 1102]
    finally:
        await connection.close()


async def test_a_short_answer_loses_its_block_not_the_connection(charger_factory) -> None:
    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        if struct.unpack(">H", pdu[1:3])[0] == 0:
            return frame(tid, unit, bytes((3, 2, 0, 1)))  # one register of the three asked for
        return registers(tid, unit, pdu)

    charger = await charger_factory(answer)
    connection = ChargePointConnection("127.0.0.1", charger.port, 1, timeout_s=1)
    await connection.ensure_connected()
    try:
        with pytest.raises(ModbusError, match="short response: 1 of 3 registers") as error:
            await connection.read(ReadRequest(Function.HOLDING, 0, 3, ()))
        assert not isinstance(error.value, ConnectionFailed)
        assert await connection.read(HOLDING) == [1100, 1101, 1102]
    finally:
        await connection.close()


async def test_no_answer_times_out_as_connection_failed(charger_factory) -> None:
    def answer(tid: int, unit: int, pdu: bytes) -> None:
        return None  # never answered

    charger = await charger_factory(answer)
    connection = ChargePointConnection("127.0.0.1", charger.port, 1, timeout_s=0.3)
    await connection.ensure_connected()
    try:
        with pytest.raises(ConnectionFailed, match="timed out"):
            await connection.read(HOLDING)
        assert not connection.connected
    finally:
        await connection.close()


async def test_a_refused_connect_is_connection_failed_naming_the_endpoint() -> None:
    port = free_port()
    connection = ChargePointConnection("127.0.0.1", port, 1, timeout_s=1)
    with pytest.raises(ConnectionFailed, match=rf"cannot connect to 127.0.0.1:{port}: connection refused"):
        await connection.ensure_connected()


def test_the_client_runs_on_uvloop_as_runpoller_does() -> None:
    import uvloop

    async def read_over_uvloop() -> list[int]:
        server = await asyncio.start_server(ScriptedCharger(registers).serve, "127.0.0.1", 0)
        connection = ChargePointConnection("127.0.0.1", server.sockets[0].getsockname()[1], 1, timeout_s=1)
        try:
            await connection.ensure_connected()
            return await connection.read(HOLDING)
        finally:
            await connection.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(read_over_uvloop()) == [1100, 1101, 1102]
