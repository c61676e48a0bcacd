"""A lean Modbus TCP server for large simulated fleets: hand-framed on asyncio, no pymodbus per request.

pymodbus' server spends three times the CPU of this one on a read (framer, transaction manager,
PDU objects, datastore, action hook: ~48 against ~15 µs, bench/simulator.py), and a poller
benchmark at thousands of charge points would measure the simulator instead of the poller.
This server parses the MBAP header itself and asks the same SimulatedChargePoint for the same
words (`read_words`, cached per change of state) and hands it the same writes (`write_words`), so
a client sees the same bytes as from the pymodbus server.

Answers follow pymodbus 3.16's server for the requests it serves (FC 1, 2, 3, 4, 5, 6, 15, 16):
- a unit id the charge point does not answer on (and no unit 0 to catch it): exception 04;
- a request pymodbus cannot decode (quantity 0 or above the protocol limit, too short, an unknown
  function code) is answered as pymodbus does, with function code 0x80 and exception 01; an
  exception response sent as a request gets its own code back with exception 04;
- FC 5 takes any value but 0xFF00 as OFF (pymodbus does not refuse it);
- FC 15/16 with a byte count that does not match the quantity: exception 03;
- addresses the profile does not serve: 02; values it refuses: 03 (the ProfileImage decides).
Other function codes pymodbus knows (diagnostics, FC 22/23, device identification) are answered
with ILLEGAL FUNCTION: no poller or command uses them.

A frame with a protocol id other than 0 or a length outside 2..254 cannot be resynchronised: the
connection is closed (logged once per connection); the other connections are unaffected.
"""

import asyncio
import logging
import struct
from typing import TYPE_CHECKING

from pymodbus.constants import ExcCodes

from gateway.choices import Function

if TYPE_CHECKING:
    from gateway.simulator.server import SimulatedChargePoint

logger = logging.getLogger(__name__)

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length (unit id + PDU), unit id
MBAP_SIZE = MBAP.size
MAX_MBAP_LENGTH = 254  # Modbus TCP ADU is at most 260 bytes: 6 header bytes + unit id + 253 PDU bytes
ADDRESS_COUNT = struct.Struct(">HH")
ADDRESS_COUNT_BYTES = struct.Struct(">HHB")

# Function code → (object type, largest quantity per request) for the reads.
READS: dict[int, tuple[str, int]] = {
    1: (Function.COIL, 2000),
    2: (Function.DISCRETE_INPUT, 2000),
    3: (Function.HOLDING, 125),
    4: (Function.INPUT, 125),
}
WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS = 5, 6, 15, 16
MAX_WRITE_COILS, MAX_WRITE_REGISTERS = 1968, 123
COIL_ON = 0xFF00
# What pymodbus' server answers to a request it cannot decode: function code 0, ILLEGAL FUNCTION.
UNDECODABLE = bytes((0x80, ExcCodes.ILLEGAL_FUNCTION))
# Function codes pymodbus' server serves and this one does not (diagnostics, FC 22/23, identification).
OTHER_PYMODBUS_CODES = frozenset((7, 8, 11, 12, 17, 20, 21, 22, 23, 24, 43))


class GarbledFrame(ValueError):
    """An MBAP header no Modbus TCP client sends: the stream cannot be resynchronised."""


def exception_pdu(function_code: int, code: int) -> bytes:
    return bytes((function_code | 0x80, code))


def pack_bits(bits: list[bool]) -> bytes:
    """Bits, first bit in the lowest bit of the first byte (Modbus coil order)."""
    packed = bytearray((len(bits) + 7) // 8)
    for index, bit in enumerate(bits):
        if bit:
            packed[index >> 3] |= 1 << (index & 7)
    return bytes(packed)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[index >> 3] & (1 << (index & 7))) for index in range(count)]


def answer_request(charge_point: "SimulatedChargePoint", unit_id: int, pdu: bytes) -> bytes:
    """The response PDU to one request PDU (pure framing around the charge point's read and write)."""
    function_code = pdu[0]
    read = READS.get(function_code)
    if read is not None:
        if len(pdu) < 5:
            return UNDECODABLE
        address, count = ADDRESS_COUNT.unpack_from(pdu, 1)
        function, most = read
        if not 1 <= count <= most:
            return UNDECODABLE
        unit = _served_unit(charge_point, unit_id)
        if unit is None:
            return exception_pdu(function_code, ExcCodes.DEVICE_FAILURE)
        words = charge_point.read_words(unit, function, address, count)
        if isinstance(words, ExcCodes):
            return exception_pdu(function_code, words)
        data = pack_bits(words) if function_code <= 2 else struct.pack(f">{count}H", *words)  # type: ignore[arg-type]
        return bytes((function_code, len(data))) + data
    if function_code in (WRITE_COIL, WRITE_REGISTER):
        if len(pdu) < 5:
            return UNDECODABLE
        address, value = ADDRESS_COUNT.unpack_from(pdu, 1)
        # pymodbus takes any value but 0xFF00 as OFF, rather than refusing it with 03.
        values: list[int] | list[bool] = [value == COIL_ON] if function_code == WRITE_COIL else [value]
        return _write(charge_point, unit_id, function_code, address, values, pdu[:5])
    if function_code in (WRITE_COILS, WRITE_REGISTERS):
        if len(pdu) < 6:
            return UNDECODABLE
        address, count, byte_count = ADDRESS_COUNT_BYTES.unpack_from(pdu, 1)
        if function_code == WRITE_REGISTERS:
            valid = 1 <= count <= MAX_WRITE_REGISTERS and byte_count == 2 * count
        else:
            valid = 1 <= count <= MAX_WRITE_COILS and byte_count == (count + 7) // 8
        if not valid or len(pdu) < 6 + byte_count:
            return exception_pdu(function_code, ExcCodes.ILLEGAL_VALUE)
        data = pdu[6 : 6 + byte_count]
        if function_code == WRITE_REGISTERS:
            values = list(struct.unpack(f">{count}H", data))
        else:
            values = unpack_bits(data, count)
        return _write(charge_point, unit_id, function_code, address, values, pdu[:5])
    if function_code in OTHER_PYMODBUS_CODES:
        return exception_pdu(function_code, ExcCodes.ILLEGAL_FUNCTION)
    if function_code > 0x80:
        # pymodbus decodes an exception response sent as a request, then fails on it: DEVICE FAILURE.
        return bytes((function_code, ExcCodes.DEVICE_FAILURE))
    return UNDECODABLE


def _served_unit(charge_point: "SimulatedChargePoint", unit_id: int) -> int | None:
    """The unit id whose registers answer, as pymodbus picks the device: its own, else unit 0's, else none."""
    units = charge_point.unit_ids or (charge_point.unit_id,)
    if unit_id in units:
        return unit_id
    return 0 if 0 in units else None


def _write(
    charge_point: "SimulatedChargePoint",
    unit_id: int,
    function_code: int,
    address: int,
    values: list[int] | list[bool],
    echo: bytes,
) -> bytes:
    unit = _served_unit(charge_point, unit_id)
    if unit is None:
        return exception_pdu(function_code, ExcCodes.DEVICE_FAILURE)
    refused = charge_point.write_words(unit, function_code, address, values)
    if refused is not None:
        return exception_pdu(function_code, refused)
    return echo  # FC 5/6 echo address and value, FC 15/16 address and quantity: the request's first 5 bytes


class LeanModbusProtocol(asyncio.Protocol):
    """One client connection: split the stream into MBAP frames, answer each, write the answers at once."""

    def __init__(self, charge_point: "SimulatedChargePoint", connections: set[asyncio.Transport]) -> None:
        self.charge_point = charge_point
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server's transports are
        self.transport = transport
        self.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        answers: list[bytes] = []
        start, end = 0, len(buffer)
        try:
            # A frame split across reads waits in the buffer for its rest.
            while end - start >= MBAP_SIZE + 1:
                transaction, protocol, length, unit_id = MBAP.unpack_from(buffer, start)
                if protocol != 0 or not 2 <= length <= MAX_MBAP_LENGTH:
                    raise GarbledFrame(f"protocol id {protocol}, length {length}")
                frame_end = start + 6 + length
                if frame_end > end:
                    break
                pdu = answer_request(self.charge_point, unit_id, buffer[start + MBAP_SIZE : frame_end])
                answers.append(MBAP.pack(transaction, 0, len(pdu) + 1, unit_id) + pdu)
                start = frame_end
        except GarbledFrame as exc:
            self._drop(f"garbled frame ({exc})")
            return
        except Exception:
            # A bug answering one request must not take the fleet down: drop this connection only.
            logger.exception("%s: cannot answer a request; closing the connection", self.charge_point.name)
            self._drop(None)
            return
        self.buffer = buffer[start:]
        if answers and self.transport is not None:
            self.transport.write(answers[0] if len(answers) == 1 else b"".join(answers))

    def _drop(self, reason: str | None) -> None:
        if reason is not None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            logger.warning("%s: %s from %s; closing that connection", self.charge_point.name, reason, peer)
        self.buffer = b""
        if self.transport is not None:
            self.transport.abort()


class LeanServer:
    """The listener of one charge point and its open connections."""

    def __init__(self, charge_point: "SimulatedChargePoint") -> None:
        self.charge_point = charge_point
        self.connections: set[asyncio.Transport] = set()
        self.listener: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self.listener.sockets[0].getsockname()[1] if self.listener and self.listener.sockets else 0

    async def start(self) -> None:
        """Listen on the charge point's host:port (0: any free port)."""
        charge_point = self.charge_point
        try:
            self.listener = await asyncio.get_running_loop().create_server(
                lambda: LeanModbusProtocol(charge_point, self.connections),
                charge_point.host,
                charge_point.port,
                reuse_address=True,
            )
        except OSError as exc:
            where = f"{charge_point.host}:{charge_point.port}"
            raise OSError(f"{charge_point.name}: cannot listen on {where}: {exc}") from exc

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        listener, self.listener = self.listener, None
        if listener is None:
            return
        listener.close()
        for transport in list(self.connections):
            transport.abort()
        await listener.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports run their connection_lost callbacks
