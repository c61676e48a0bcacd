"""A minimal hand-written Modbus TCP server that serves literal words and records writes.

Deliberately not gateway/simulator: it knows nothing of profiles or the codec. It answers FC03/FC04
from a table of (unit id, function, address) -> word, records FC06/FC16 writes as they arrive,
and answers ILLEGAL DATA ADDRESS for a unit id or function it has no words for, so a read planned
on the wrong unit id or function code loses its values instead of reading zeros.
(Frame layout: Modbus Messaging on TCP/IP Implementation Guide V1.0b §3.1 (MBAP header) and
Modbus Application Protocol V1.1b3 §6.3, 6.4, 6.6, 6.12.)
"""

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

READ_FUNCTIONS = {3: "holding", 4: "input"}
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2


@dataclass(frozen=True)
class WriteSeen:
    """One write request as it arrived on the wire."""

    unit_id: int
    function_code: int
    address: int
    words: tuple[int, ...]


@dataclass
class WordServer:
    """Serves `words[(unit_id, function, address)]`; unset addresses of a served table read 0."""

    words: dict[tuple[int, str, int], int]
    writes: list[WriteSeen] = field(default_factory=list)
    reads: list[tuple[int, int, int, int]] = field(default_factory=list)  # (unit, fc, address, count)
    _server: asyncio.Server | None = None
    _clients: set[asyncio.Task] = field(default_factory=set)

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)

    async def stop(self) -> None:
        """Stop listening and end every client connection (no task left behind)."""
        if self._server is not None:
            self._server.close()
        for task in self._clients:
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                header = await reader.readexactly(7)
                transaction, protocol, length, unit_id = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                answer = self._answer(unit_id, pdu)
                writer.write(struct.pack(">HHHB", transaction, protocol, len(answer) + 1, unit_id) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or stop() ended the connection
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, unit_id: int, pdu: bytes) -> bytes:
        function_code = pdu[0]
        if function_code in READ_FUNCTIONS:
            address, count = struct.unpack(">HH", pdu[1:5])
            self.reads.append((unit_id, function_code, address, count))
            table = READ_FUNCTIONS[function_code]
            if not any(key[0] == unit_id and key[1] == table for key in self.words):
                return bytes((function_code | 0x80, ILLEGAL_DATA_ADDRESS))
            values = [self.words.get((unit_id, table, address + i), 0) for i in range(count)]
            return bytes((function_code, 2 * count)) + struct.pack(f">{count}H", *values)
        if function_code == 6:
            address, value = struct.unpack(">HH", pdu[1:5])
            self.writes.append(WriteSeen(unit_id, 6, address, (value,)))
            return pdu[:5]
        if function_code == 16:
            address, count, _byte_count = struct.unpack(">HHB", pdu[1:6])
            values = struct.unpack(f">{count}H", pdu[6 : 6 + 2 * count])
            self.writes.append(WriteSeen(unit_id, 16, address, tuple(values)))
            return pdu[:5]
        return bytes((function_code | 0x80, ILLEGAL_FUNCTION))
