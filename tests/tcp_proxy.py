"""A TCP proxy on the test's event loop that can be cut (every socket dropped, new ones refused) and restored."""

import asyncio
import contextlib
import socket
import struct

CHUNK_BYTES = 65536
LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}: close() sends RST


class TcpProxy:
    """Forwards 127.0.0.1:port to an upstream address until cut.

    cut() closes every open connection at once (both sides, as a broken network would look to a
    client: reset or EOF) and stops listening, so new connections are refused; restore() listens
    again on the same port.
    """

    def __init__(self, upstream_host: str, upstream_port: int, port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.connections_seen = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task] = set()

    async def start(self) -> None:
        # reuse_address: restore() binds the port again right after cut() closed it.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> int:
        """Drop every connection and refuse new ones; returns how many connections were dropped."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        dropped = len(self._writers) // 2
        for writer in list(self._writers):
            with contextlib.suppress(OSError):
                # RST rather than FIN: the peer sees the connection break, not a polite close.
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            writer.transport.abort()
        self._writers.clear()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        return dropped

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        if self._server is None:  # cut while connecting upstream
            client_writer.transport.abort()
            upstream_writer.transport.abort()
            return
        self.connections_seen += 1
        self._writers |= {client_writer, upstream_writer}
        for reader, writer in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            pump = asyncio.create_task(self._pump(reader, writer))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
