"""One persistent Modbus TCP connection to a charge point: reads, writes, typed errors, pacing."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from gateway.choices import Function
from gateway.modbus.pacing import Pacing
from gateway.modbus.planner import ReadRequest
from gateway.runtime import wait_unless_stopped

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Wait = Callable[[asyncio.Event, float], Awaitable[bool]]


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
        self._client: AsyncModbusTcpClient | None = None
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
        # Reconnects are ours (with backoff in the poller), not pymodbus's: reconnect_delay=0.
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0)
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        if not ok:
            client.close()
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: connection refused or timed out")
        self._client = client

    async def read(self, request: ReadRequest) -> list[int] | list[bool]:
        """Execute one planned read; returns exactly request.count registers or bits."""
        self._require_client()
        await self._pace(write=False)
        client = self._require_client()  # the wait may have outlasted the connection
        call = {
            Function.HOLDING: client.read_holding_registers,
            Function.INPUT: client.read_input_registers,
            Function.COIL: client.read_coils,
            Function.DISCRETE_INPUT: client.read_discrete_inputs,
        }[request.function]
        unit_id = self.unit_id if request.unit_id is None else request.unit_id
        response = await self._call(call(request.address, count=request.count, device_id=unit_id))
        if response.isError():
            raise DeviceException(request, getattr(response, "exception_code", 0))
        if request.function in (Function.COIL, Function.DISCRETE_INPUT):
            return list(response.bits[: request.count])
        registers = list(response.registers)
        if len(registers) != request.count:
            raise ModbusError(f"short response: {len(registers)} of {request.count} registers")
        return registers

    async def write_registers(self, address: int, values: list[int], unit_id: int | None = None) -> None:
        """Write holding registers in one request (FC06 for one, FC16 for several)."""
        self._require_client()
        device_id = self.unit_id if unit_id is None else unit_id
        await self._pace(write=True)
        client = self._require_client()  # the wait may have outlasted the connection
        if len(values) == 1:
            call = client.write_register(address, values[0], device_id=device_id)
        else:
            call = client.write_registers(address, values, device_id=device_id)
        try:
            response = await self._call(call)
        finally:
            self._last_write_done = self._clock()
        if response.isError():
            raise DeviceException(None, getattr(response, "exception_code", 0), f"write to {address}")

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _require_client(self) -> AsyncModbusTcpClient:
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
        try:
            return await asyncio.wait_for(awaitable, self.timeout_s + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            # A timed-out transaction leaves the stream in an unknown state: drop the connection.
            await self.close()
            raise ConnectionFailed(f"{self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        finally:
            # Pacing counts from the answer (or failure): the charger has finished with this one.
            self._last_request_done = self._clock()
