"""Misbehaving chargers and a connection-counting proxy, built from real sockets for the poller tests."""

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class HungCharger:
    """Accepts TCP connections and reads requests, but never answers one.

    `request_at` keeps the monotonic arrival time of every chunk of request bytes: a read is
    outstanding from its arrival until the poller gives up.
    """

    server: asyncio.Server | None = None
    request_at: list[float] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> "HungCharger":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                self.request_at.append(time.monotonic())


@contextlib.contextmanager
def silent_charger(timeout_s: float = 1.0) -> Iterator[int]:
    """A port whose listener drops further SYNs (no RST): connecting there hangs until it times out.

    listen(0) with one connection parked in the accept queue and never accepted: Linux drops a SYN
    when the accept queue is full, so the client retransmits instead of being refused. Checked
    before use: a probe connect must time out, not fail fast.
    """
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.settimeout(timeout_s)
        filler.connect(("127.0.0.1", port))
        with socket.socket() as probe:
            probe.settimeout(timeout_s)
            started = time.monotonic()
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                pass
            else:
                raise AssertionError("the silent charger accepted a connection")
            assert time.monotonic() - started >= timeout_s * 0.9, "the connect failed fast instead of hanging"
        yield port
    finally:
        filler.close()
        listener.close()


@dataclass
class CountingProxy:
    """A TCP proxy in front of a charger that counts the connections open at the charger's side.

    `open_now` rises when a client connects and falls once the client has closed; `max_open`
    is the most ever open at once. `delay_s` holds each response back, so polls take a while
    and an edit lands while a poll is in flight.
    """

    target_port: int
    delay_s: float = 0.0
    server: asyncio.Server | None = None
    open_now: int = 0
    max_open: int = 0
    connections: int = 0
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> "CountingProxy":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        charger_writer = None
        try:
            charger_reader, charger_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            upstream = asyncio.create_task(self._pump(client_reader, charger_writer, 0.0))
            downstream = asyncio.create_task(self._pump(charger_reader, client_writer, self.delay_s))
            try:
                await upstream  # ends when the client closes its side
            finally:
                downstream.cancel()
                await asyncio.gather(downstream, return_exceptions=True)
        finally:
            self.open_now -= 1
            self._tasks.discard(task)
            client_writer.close()
            if charger_writer is not None:
                charger_writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                if delay_s:
                    await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()


class ThreadedHungCharger:
    """A HungCharger served from threads, for a poller running in another process."""

    def __init__(self) -> None:
        self.request_at: list[float] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port: int = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="hung-charger", daemon=True).start()

    def requests(self) -> int:
        with self._lock:
            return len(self.request_at)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                with self._lock:
                    self._connections.append(connection)
                threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while connection.recv(4096):
                with self._lock:
                    self.request_at.append(time.monotonic())
