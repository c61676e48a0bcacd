"""One persistent Modbus TCP connection to a charge point: reads, writes, typed errors."""

import asyncio
import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from gateway.choices import Function
from gateway.modbus.planner import ReadRequest

logger = logging.getLogger(__name__)


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


class ChargePointConnection:
    """A persistent client for one endpoint; call `ensure_connected()` before using it."""

    def __init__(self, host: str, port: int, unit_id: int, timeout_s: float) -> None:
        self.host, self.port, self.unit_id, self.timeout_s = host, port, unit_id, timeout_s
        self._client: AsyncModbusTcpClient | None = None

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
        client = self._require_client()
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
        client = self._require_client()
        device_id = self.unit_id if unit_id is None else unit_id
        if len(values) == 1:
            call = client.write_register(address, values[0], device_id=device_id)
        else:
            call = client.write_registers(address, values, device_id=device_id)
        response = await self._call(call)
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

    async def _call(self, awaitable):
        try:
            return await asyncio.wait_for(awaitable, self.timeout_s + 1)
        except (TimeoutError, OSError, ModbusException) as exc:
            # A timed-out transaction leaves the stream in an unknown state: drop the connection.
            await self.close()
            raise ConnectionFailed(f"{self.host}:{self.port}: {exc or type(exc).__name__}") from exc
