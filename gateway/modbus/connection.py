"""One persistent Modbus TCP connection to a charge point: reads, writes, typed errors, pacing."""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

from pymodbus.constants import ExcCodes

from gateway.choices import Function
from gateway.modbus.client import (
    READ_COILS,
    READ_DISCRETE_INPUTS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    ExceptionResponse,
    ModbusTcpClient,
    ProtocolError,
    ShortResponse,
)
from gateway.modbus.pacing import Pacing
from gateway.modbus.planner import ReadRequest
from gateway.runtime import wait_unless_stopped

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Wait = Callable[[asyncio.Event, float], Awaitable[bool]]
FUNCTION_CODES = {
    Function.COIL: READ_COILS,
    Function.DISCRETE_INPUT: READ_DISCRETE_INPUTS,
    Function.HOLDING: READ_HOLDING_REGISTERS,
    Function.INPUT: READ_INPUT_REGISTERS,
}


class ModbusError(Exception):
    """Base of everything that can go wrong talking to a charge point."""


class ConnectionFailed(ModbusError):
    """Could not connect, or the connection dropped or timed out: the charge point is offline."""


class DeviceException(ModbusError):
    """The charge point answered with a Modbus exception response."""

    def __init__(self, request: ReadRequest | None, code: int, what: str = "") -> None:
        self.code = code
        try:
            self.code_name = ExcCodes(code).name.replace("_", " ").replace("ADDRESS", "DATA ADDRESS")
        except ValueError:
            self.code_name = f"exception code {code}"
        where = what or (
            f"{request.function} registers {request.address}..{request.address + request.count - 1}"
            + (f" (unit {request.unit_id})" if request.unit_id is not None else "")
            if request
            else "request"
        )
        super().__init__(f"{self.code_name} for {where}")


class PaceInterrupted(Exception):
    """`stop` was set while a request waited for its turn; the request was not sent."""


class ChargePointConnection:
    """A persistent client for one endpoint; call `ensure_connected()` before using it.

    Every request waits for the charger's pacing first: at least `pacing.request_gap_ms` after the
    previous request's answer (or failure), and a write at least `pacing.write_gap_ms` after the
    previous write's. The times live in this object, so a reconnect does not reset them, and only
    this charger's requests wait. Setting `stop` ends a pending wait at once (PaceInterrupted);
    close() never waits, and a request whose wait outlasts the connection fails as not connected.
    `clock` and `wait` are injectable for tests (defaults: time.monotonic, wait_unless_stopped).
    """

    def __init__(
        self,
        host: str,
        port: int,
        unit_id: int,
        timeout_s: float,
        *,
        pacing: Pacing = Pacing(),  # noqa: B008 (frozen, immutable)
        stop: asyncio.Event | None = None,
        clock: Clock = time.monotonic,
        wait: Wait = wait_unless_stopped,
    ) -> None:
        self.host, self.port, self.unit_id, self.timeout_s = host, port, unit_id, timeout_s
        self.pacing = pacing
        self.stop = stop
        self._clock, self._wait = clock, wait
        self._client: ModbusTcpClient | None = None
        self._last_request_done: float | None = None
        self._last_write_done: float | None = None
        self.paced_s = 0.0  # total time requests waited for their turn (shown by probe)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def ensure_connected(self) -> None:
        if self.connected:
            return
        await self.close()
        # Reconnects are the poller's (with backoff); a connect that hangs ends at the timeout.
        try:
            self._client = await ModbusTcpClient.connect(self.host, self.port, self.timeout_s)
        except TimeoutError:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: timed out") from None
        except OSError as exc:
            # asyncio's message repeats the address; the errno's text does not.
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {reason}") from exc

    async def read(self, request: ReadRequest) -> list[int] | list[bool]:
        """Execute one planned read; returns exactly request.count registers or bits."""
        self._require_client()
        await self._pace(write=False)
        client = self._require_client()  # the wait may have outlasted the connection
        unit_id = self.unit_id if request.unit_id is None else request.unit_id
        try:
            return await self._call(
                client.read(FUNCTION_CODES[request.function], unit_id, request.address, request.count, self.timeout_s)
            )
        except ExceptionResponse as exc:
            raise DeviceException(request, exc.code) from None
        except ShortResponse as exc:
            raise ModbusError(str(exc)) from None

    async def write_registers(self, address: int, values: list[int], unit_id: int | None = None) -> None:
        """Write holding registers in one request (FC06 for one, FC16 for several)."""
        self._require_client()
        device_id = self.unit_id if unit_id is None else unit_id
        await self._pace(write=True)
        client = self._require_client()  # the wait may have outlasted the connection
        try:
            await self._call(client.write_registers(device_id, address, values, self.timeout_s))
        except ExceptionResponse as exc:
            raise DeviceException(None, exc.code, f"write to {address}") from None
        finally:
            self._last_write_done = self._clock()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()
            await client.wait_closed()

    def _require_client(self) -> ModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise ConnectionFailed(f"not connected to {self.host}:{self.port}")
        return self._client

    async def _pace(self, *, write: bool) -> None:
        """Wait until the charger's pacing allows the next request (no busy waiting)."""
        stop = self.stop or asyncio.Event()
        while True:
            due = self._due_at(write=write)
            delay = due - self._clock()
            if delay <= 0:
                return
            if await self._wait(stop, delay):
                raise PaceInterrupted(f"{self.host}:{self.port}: stopped while waiting to pace a request")
            self.paced_s += delay

    def _due_at(self, *, write: bool) -> float:
        due = float("-inf")
        if self._last_request_done is not None:
            due = self._last_request_done + self.pacing.request_gap_ms / 1000
        if write and self._last_write_done is not None:
            due = max(due, self._last_write_done + self.pacing.write_gap_ms / 1000)
        return due

    async def _call(self, awaitable):
        """Await one request (its timeout is the client's); connection-level failures drop the connection."""
        try:
            return await awaitable
        except (ProtocolError, OSError) as exc:
            # A timed-out or garbled transaction leaves the stream in an unknown state: drop the connection.
            await self.close()
            raise ConnectionFailed(f"{self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        finally:
            # Pacing counts from the answer (or failure): the charger has finished with this one.
            self._last_request_done = self._clock()
