"""A lean Modbus TCP client for the poll loop: MBAP framing over an asyncio.Protocol, no per-request tasks.

pymodbus's client cost about a fifth of the poller's CPU per record (bench/poller.py, py-spy): a
frame object, a transaction manager and a timer task per request. A charge point link sends one
request at a time and waits for its answer, so the client needs little: frame the PDU with a
transaction id, match the answer's id, and turn what comes back into values or typed errors.
pymodbus stays where it is not the cost (the simulator, the tests' reference client).

Modbus Application Protocol V1.1b3 (function codes, exception responses) and Modbus Messaging on
TCP/IP V1.0b (the MBAP header: transaction id, protocol id 0, length, unit id).
"""

import asyncio
import struct

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length of what follows, unit id
READ_REQUEST = struct.Struct(">BHH")  # function code, first address, count
MBAP_BYTES = MBAP.size
MAX_FRAME_LENGTH = 254  # the MBAP length field: unit id + PDU of at most 253 bytes (§4.1)

# Function codes (Modbus Application Protocol V1.1b3 §6).
READ_COILS = 0x01
READ_DISCRETE_INPUTS = 0x02
READ_HOLDING_REGISTERS = 0x03
READ_INPUT_REGISTERS = 0x04
WRITE_SINGLE_REGISTER = 0x06
WRITE_MULTIPLE_REGISTERS = 0x10
BIT_FUNCTIONS = frozenset((READ_COILS, READ_DISCRETE_INPUTS))
EXCEPTION_FLAG = 0x80


class ProtocolError(Exception):
    """The connection carried something that is not a Modbus TCP answer, or it closed or timed out."""


class RequestTimeout(ProtocolError):
    """No answer within the request's timeout (told apart from other protocol errors in the metrics)."""


class ShortResponse(Exception):
    """A well-framed answer carrying fewer values than asked for (the connection stays usable)."""


class ExceptionResponse(Exception):
    """The device answered with a Modbus exception response (function code | 0x80, exception code)."""

    def __init__(self, function_code: int, code: int) -> None:
        super().__init__(f"exception code {code} for function {function_code}")
        self.function_code, self.code = function_code, code


class ModbusTcpClient(asyncio.Protocol):
    """One TCP connection to one device; `request` sends a PDU and returns the answer's PDU.

    Requests are not pipelined: a charger answers one at a time anyway, and the link that owns the
    connection (gateway/modbus/connection.py) sends the next one after the answer. A timeout, a
    closed connection or a frame that cannot be Modbus TCP closes the connection: after that the
    stream's position is unknown, so the caller reconnects.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._transaction_id = 0
        self._waiting: tuple[int, asyncio.Future[bytes]] | None = None
        self._lost: Exception | None = None
        self._closed = asyncio.get_running_loop().create_future()  # done once the socket is closed

    @classmethod
    async def connect(cls, host: str, port: int, timeout_s: float) -> "ModbusTcpClient":
        """Open a connection; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            _transport, client = await loop.create_connection(cls, host, port)
        return client

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._lost is None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(ProtocolError("connection closed"))

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (a charger that allows one connection sees it gone)."""
        if self._transport is not None:
            await asyncio.shield(self._closed)

    async def request(self, unit_id: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send one request PDU and wait for the answer's PDU (exception responses raise)."""
        if not self.connected:
            raise ProtocolError(str(self._lost) if self._lost else "not connected")
        assert self._transport is not None
        self._transaction_id = (self._transaction_id + 1) & 0xFFFF
        tid = self._transaction_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._waiting = (tid, future)
        self._transport.write(MBAP.pack(tid, 0, len(pdu) + 1, unit_id) + pdu)
        # A plain timer that fails the future, rather than asyncio.timeout (which cancels and
        # un-cancels the task): one of these runs per request, thousands a second.
        timer = loop.call_later(timeout_s, self._time_out, future, timeout_s)
        try:
            answer = await future
        finally:
            timer.cancel()
            self._waiting = None
        function_code = pdu[0]
        if answer[0] == function_code | EXCEPTION_FLAG and len(answer) >= 2:
            raise ExceptionResponse(function_code, answer[1])
        if answer[0] != function_code:
            self.close()
            raise ProtocolError(f"answer to function {function_code} came back as function {answer[0]}")
        return answer

    async def read(self, function_code: int, unit_id: int, address: int, count: int, timeout_s: float) -> list:
        """FC01/02 (bits, as bools) or FC03/04 (16-bit registers): exactly `count` values."""
        answer = await self.request(unit_id, READ_REQUEST.pack(function_code, address, count), timeout_s)
        data = answer[2:]
        if len(answer) < 2 or answer[1] != len(data):
            self.close()
            raise ProtocolError(f"byte count {answer[1] if len(answer) > 1 else '?'} but {len(data)} bytes of data")
        if function_code in BIT_FUNCTIONS:
            if len(data) * 8 < count:
                raise ShortResponse(f"short response: {len(data) * 8} of {count} bits")
            return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(count)]
        if len(data) != 2 * count:
            raise ShortResponse(f"short response: {len(data) // 2} of {count} registers")
        return list(struct.unpack(f">{count}H", data))

    async def write_registers(self, unit_id: int, address: int, values: list[int], timeout_s: float) -> None:
        """FC06 for one register, FC16 for several; the echo is not compared (chargers differ)."""
        if len(values) == 1:
            pdu = struct.pack(">BHH", WRITE_SINGLE_REGISTER, address, values[0])
        else:
            pdu = struct.pack(
                f">BHHB{len(values)}H", WRITE_MULTIPLE_REGISTERS, address, len(values), 2 * len(values), *values
            )
        await self.request(unit_id, pdu, timeout_s)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._fail(ProtocolError(f"connection lost: {exc}" if exc else "connection closed by the device"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= MBAP_BYTES:
            tid, protocol_id, length, _unit = MBAP.unpack_from(buffer)
            if protocol_id != 0 or not 2 <= length <= MAX_FRAME_LENGTH:
                self._garbled(f"not a Modbus TCP frame (protocol id {protocol_id}, length {length})")
                return
            end = MBAP_BYTES - 1 + length
            if len(buffer) < end:
                return
            pdu = bytes(buffer[MBAP_BYTES:end])
            del buffer[:end]
            waiting = self._waiting
            # An answer to no request in flight (e.g. a late one to a request that timed out, whose
            # connection is already closed) is dropped.
            if waiting is not None and waiting[0] == tid and not waiting[1].done():
                waiting[1].set_result(pdu)

    def _time_out(self, future: asyncio.Future, timeout_s: float) -> None:
        if not future.done():
            self._garbled(f"timed out: no answer within {timeout_s:g} s", RequestTimeout)

    def _garbled(self, reason: str, error: type[ProtocolError] = ProtocolError) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(error(reason))

    def _fail(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        self._buffer.clear()
        if self._waiting is not None and not self._waiting[1].done():
            self._waiting[1].set_exception(exc)
