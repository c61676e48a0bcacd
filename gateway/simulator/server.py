"""One simulated charge point served over Modbus TCP with pymodbus' SimDevice datastore.

The SimDevice `action` hook is the whole bridge: on a read it copies the behaviour's register
image into pymodbus' registers, on a write it checks the profile and applies the new setpoint.
"""

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.choices import Function, OperatorStatus, Role
from gateway.profiles.codec import Value
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.simulator.behaviour import BehaviourEvent, ChargePointBehaviour
from gateway.simulator.registers import (
    BIT_FUNCTIONS,
    FUNCTION_BY_CODE,
    WriteRefused,
    build_image,
    check_write,
    defined_addresses,
    iec_state_for,
    role_value,
)

logger = logging.getLogger(__name__)

# pymodbus' non-shared layout: one address space per object type, in this order.
_LAYOUT = (Function.COIL, Function.DISCRETE_INPUT, Function.HOLDING, Function.INPUT)
_STATE_ROLES = (Role.VENDOR_STATUS, Role.IEC61851_STATE)


@dataclass(frozen=True)
class AcceptedWrite:
    """A write the simulated charger took, as an engineering value."""

    register: str
    value: Value
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class SimulatedChargePoint:
    """A behaviour model, its profile's register image and the Modbus TCP server serving it.

    The setters are thread-safe, so sync tests can pin values while the server runs in a thread.
    """

    def __init__(
        self,
        name: str,
        profile: ProfileSpec,
        behaviour: ChargePointBehaviour,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        identity: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.profile = profile
        self.behaviour = behaviour
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self._identity = dict(identity or {})
        self._written: dict[str, Value] = {}
        self._overrides: dict[str, Value] = {}
        self._status_override: str | None = None
        self._writes: deque[AcceptedWrite] = deque(maxlen=100)
        self._lock = threading.Lock()
        self._server: ModbusTcpServer | None = None
        self._defined = {function: defined_addresses(profile, function) for function in _LAYOUT}

    # --- overrides for tests and demos ---------------------------------------------------
    def set_value(self, name: str, value: Value) -> None:
        """Pin what clients read for a register (by name or telemetry role) until cleared."""
        register = self._register(name)
        with self._lock:
            self._overrides[register.name] = value

    def set_status(self, status: str) -> None:
        """Pin the operator status (mapped through the profile's status table) until cleared."""
        status = OperatorStatus(status).value
        with self._lock:
            self._status_override = status

    def clear_overrides(self) -> None:
        """Serve the behaviour model's own values again."""
        with self._lock:
            self._overrides.clear()
            self._status_override = None

    def connect_vehicle(self, phases: int | None = None) -> None:
        """A vehicle arrives now, if the charge point is free."""
        with self._lock:
            self._log(self.behaviour.connect_vehicle(phases))

    @property
    def last_writes(self) -> list[AcceptedWrite]:
        """The latest accepted writes, oldest first."""
        with self._lock:
            return list(self._writes)

    def register_values(self) -> dict[str, Value]:
        """The engineering value of every register, as a client decoding them would read it."""
        with self._lock:
            return self._register_values()

    # --- time ---------------------------------------------------------------------------
    def tick(self, dt_s: float) -> list[BehaviourEvent]:
        """Advance the behaviour by dt_s real seconds and log what happened."""
        with self._lock:
            events = self.behaviour.tick(dt_s)
        for event in events:
            self._log(event)
        return events

    # --- the server ---------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on host:port (port 0: any free port, then `self.port` says which)."""
        device = SimDevice(id=self.unit_id, simdata=self._simdata(), action=self._action)
        server = ModbusTcpServer(device, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"{self.name}: cannot listen on {self.host}:{self.port}") from exc
        self._server = server
        listener = server.transport
        if isinstance(listener, asyncio.Server) and listener.sockets:
            self.port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        listener = server.transport
        await server.shutdown()
        if isinstance(listener, asyncio.Server):
            await listener.wait_closed()
        # pymodbus keeps the last server in a class attribute; drop it so nothing outlives stop.
        if ModbusBaseServer.active_server is server:
            ModbusBaseServer.active_server = None
        await asyncio.sleep(0)  # let the closed transports run their connection_lost callbacks

    def _simdata(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        """One SimData per contiguous run of defined addresses, per object type."""
        blocks: list[list[SimData]] = []
        for function in _LAYOUT:
            is_bits = function in BIT_FUNCTIONS
            runs = _runs(sorted(self._defined[function]))
            if is_bits:
                block = [SimData(a, values=[False] * n, datatype=DataType.BITS) for a, n in runs]
                # pymodbus needs a block per type; the action refuses bits the profile lacks.
                blocks.append(block or [SimData(0, values=[False] * 16, datatype=DataType.BITS)])
            else:
                block = [SimData(a, count=n, datatype=DataType.REGISTERS) for a, n in runs]
                blocks.append(block or [SimData(0, datatype=DataType.INVALID)])
        return blocks[0], blocks[1], blocks[2], blocks[3]

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook, called for every request after its own address check."""
        function = FUNCTION_BY_CODE.get(function_code)
        if function is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            return self._write(function, address, set_values)
        # For bit requests pymodbus passes the count in 16-bit words, so only the start is exact.
        if function in BIT_FUNCTIONS and address not in self._defined[function]:
            return ExcCodes.ILLEGAL_ADDRESS
        with self._lock:
            image = build_image(self.profile, self._register_values())[function]
        for addr, word in image.items():
            if function in BIT_FUNCTIONS:
                index, bit = addr // 16 - start_address, addr % 16
                if 0 <= index < len(current_registers):
                    mask = 1 << bit
                    value = current_registers[index]
                    current_registers[index] = (value | mask) if word else (value & ~mask)
            elif 0 <= addr - start_address < len(current_registers):
                current_registers[addr - start_address] = int(word)
        return None

    def _write(self, function: str, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        try:
            accepted = check_write(self.profile, function, address, list(values))
        except WriteRefused as exc:
            logger.info("%s: write refused at %s %s: %s", self.name, function, address, exc)
            return exc.code
        with self._lock:
            for name, value in accepted.items():
                self._writes.append(AcceptedWrite(name, value))
                role = self._register(name).role
                if role == Role.MAX_CURRENT_A and isinstance(value, int | float):
                    self._log(self.behaviour.set_max_current(value))
                elif not role:
                    self._written[name] = value
                logger.info("%s: %s set to %s", self.name, name, value)
        return None

    # --- helpers (callers hold the lock where noted) -------------------------------------
    def _register_values(self) -> dict[str, Value]:
        """Engineering values by register name; the caller holds the lock."""
        behaviour = self.behaviour
        status = self._status_override or behaviour.status
        iec_state = behaviour.iec61851_state
        if self._status_override:
            iec_state = iec_state_for(self.profile, status, iec_state)
        by_role = behaviour.values()
        values: dict[str, Value] = {}
        for register in self.profile.registers:
            if register.role in _STATE_ROLES:
                values[register.name] = role_value(self.profile, register, status, iec_state)
            elif register.role:
                values[register.name] = by_role.get(register.role)
            elif register.name in self._written:
                values[register.name] = self._written[register.name]
            else:
                values[register.name] = self._identity.get(register.name)
        values.update(self._overrides)
        return values

    def _register(self, name: str) -> RegisterSpec:
        for register in self.profile.registers:
            if register.name == name:
                return register
        register = self.profile.register_for(name) if name else None
        if register is None:
            raise KeyError(f"profile {self.profile.slug} has no register or role {name!r}")
        return register

    def _log(self, event: BehaviourEvent | None) -> None:
        if event is not None:
            detail = f" ({event.detail})" if event.detail else ""
            logger.info("%s: %s%s", self.name, event.kind.replace("_", " "), detail)


def _runs(addresses: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted addresses as (start, count)."""
    runs: list[tuple[int, int]] = []
    for address in addresses:
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((address, 1))
    return runs
