"""One simulated charge point served over Modbus TCP, by pymodbus' SimDevice datastore or the lean server.

pymodbus (the default): one SimDevice per unit id the profile uses (Alfen: the socket's own and the
station's 200), all on one TCP server. The SimDevice `action` hook is the whole bridge: on a read it
checks the request against the profile's image and copies the behaviour's words into pymodbus'
registers; on a write it checks the profile and applies the new setpoint.

Lean (gateway.simulator.lean): hand-framed Modbus TCP on asyncio for large fleets; it asks the same
charge point for the same words (`read_words`) and hands it the same writes (`write_words`).
"""

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.choices import Function, Iec61851State, OperatorStatus, Role
from gateway.profiles.codec import Value
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.simulator.behaviour import MIN_CHARGE_CURRENT_A, BehaviourEvent, ChargePointBehaviour, Phase
from gateway.simulator.encoding import plausible_value
from gateway.simulator.lean import LeanServer
from gateway.simulator.registers import BIT_FUNCTIONS, FUNCTION_BY_CODE, ProfileImage, WriteRefused
from gateway.simulator.status import StatusPair, iec_state_code
from gateway.simulator.watchdog import FailsafeWatchdog
from gateway.simulator.writes import Shows

logger = logging.getLogger(__name__)

# pymodbus' non-shared layout: one address space per object type, in this order.
_LAYOUT = (Function.COIL, Function.DISCRETE_INPUT, Function.HOLDING, Function.INPUT)
_WRITE_SINGLE_REGISTER = 6
_READ_CODES = {Function.COIL: 1, Function.DISCRETE_INPUT: 2, Function.HOLDING: 3, Function.INPUT: 4}


@dataclass(frozen=True)
class AcceptedWrite:
    """A write the simulated charger took, as an engineering value."""

    register: str
    value: Value
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class ArrivedRequest:
    """One request as the simulated charger received it: when (time.monotonic()) and what."""

    at: float
    function_code: int
    address: int
    count: int
    write: bool


class SimulatedChargePoint:
    """A behaviour model, its profile's register image and the Modbus TCP server serving it.

    The setters are thread-safe, so sync tests can pin values while the server runs in a thread.
    Writes act as the profile's commands say (gateway.simulator.writes); with `ignore_writes` they
    are acknowledged and recorded but change nothing, like a charger that ignores them.
    A profile with a set_failsafe_current command gets the vendor's watchdog
    (gateway.simulator.watchdog): `failsafe_active` says whether the charger has fallen back.
    `clock` (seconds, monotonic) lets a test move the watchdog's time on without waiting.
    """

    def __init__(
        self,
        name: str,
        profile: ProfileSpec,
        behaviour: ChargePointBehaviour,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int | None = None,
        identity: dict[str, Value] | None = None,
        image: ProfileImage | None = None,
        lean: bool = False,
        ignore_writes: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock
        self.lean = lean
        self.profile = profile
        self.behaviour = behaviour
        self.host = host
        self.port = port
        self.unit_id = profile.default_unit_id if unit_id is None else unit_id
        if image is None or image.profile is not profile or image.unit_id != self.unit_id:
            image = ProfileImage(profile, self.unit_id)
        self.image = image
        self._identity = dict(identity or {})
        self._plausible = {register.name: plausible_value(register, image.hints) for register in profile.registers}
        self._behaviour_roles = frozenset(behaviour.values())
        self._heartbeat_targets = frozenset(heartbeat.register for heartbeat in profile.heartbeats)
        self._written: dict[str, Value] = {}
        self._overrides: dict[str, Value] = {}
        self._status_override: tuple[str, str | None] | None = None
        self._writes: deque[AcceptedWrite] = deque(maxlen=100)
        self._requests: deque[ArrivedRequest] = deque(maxlen=1000)
        self._heartbeats: dict[str, int] = {}
        self._heartbeat_at: dict[str, datetime] = {}
        self._limit_a = behaviour.max_current_a
        self._enabled = True
        self._ignore_writes = ignore_writes
        self._watchdog = FailsafeWatchdog.for_profile(profile)
        self._lock = threading.Lock()
        # Bumped on every change of what the registers show; the encoded words are cached per version.
        self._version = 0
        self._encoded: dict[tuple[int, str], tuple[int, dict[int, int | bool]]] = {}
        self._server: ModbusTcpServer | None = None
        self._lean_server: LeanServer | None = None

    @property
    def unit_ids(self) -> tuple[int, ...]:
        """Every unit id this charge point answers on."""
        return self.image.unit_ids

    # --- overrides for tests and demos ---------------------------------------------------
    def set_value(self, name: str, value: Value) -> None:
        """Pin the engineering value clients read for a register (by name or role) until cleared."""
        register = self._register(name)
        with self._lock:
            self._overrides[register.name] = value
            self._version += 1

    def set_status(self, status: str, iec61851_state: str | None = None) -> None:
        """Pin the operator status (and IEC state) until cleared; ValueError if the profile cannot show it."""
        status = OperatorStatus(status).value
        if iec61851_state is not None:
            iec61851_state = Iec61851State(iec61851_state).value
        if not self.image.status.can_report(status, iec61851_state):
            shown = ", ".join(f"{s}/{iec}" for s, iec in self.image.status.pairs) or "nothing"
            raise ValueError(
                f"profile {self.profile.slug} cannot report {status}"
                + (f" in state {iec61851_state}" if iec61851_state else "")
                + f" (it reports: {shown})"
            )
        with self._lock:
            self._status_override = (status, iec61851_state)
            self._version += 1

    def clear_overrides(self) -> None:
        """Serve the behaviour model's own values again."""
        with self._lock:
            self._overrides.clear()
            self._status_override = None
            self._version += 1

    def set_ignore_writes(self, flag: bool) -> None:
        """Acknowledge writes but change nothing (True), like a charger that ignores them, or honour them again."""
        with self._lock:
            self._ignore_writes = flag

    @property
    def ignore_writes(self) -> bool:
        return self._ignore_writes

    # --- the failsafe watchdog ----------------------------------------------------------------
    @property
    def failsafe_active(self) -> bool:
        """Whether the watchdog lapsed and the charger runs at its failsafe current."""
        with self._lock:
            self._check_watchdog()
            return self._watchdog is not None and self._watchdog.active

    @property
    def failsafe_current_a(self) -> float | None:
        """The failsafe current set (or the vendor's default); None without a watchdog."""
        with self._lock:
            return None if self._watchdog is None else self._watchdog.current_a

    @property
    def failsafe_timeout_s(self) -> float | None:
        """The watchdog timeout set (or the vendor's default; 0 = disabled); None without a watchdog."""
        with self._lock:
            return None if self._watchdog is None else self._watchdog.timeout_s

    @property
    def watchdog(self) -> FailsafeWatchdog | None:
        """The watchdog itself (read-only use: lapses, deadline_s, armed)."""
        return self._watchdog

    def connect_vehicle(
        self,
        phases: int | None = None,
        *,
        max_current_a: float | None = None,
        energy_needed_wh: float | None = None,
        stay_s: float | None = None,
        prepare_s: float | None = None,
    ) -> None:
        """A vehicle arrives now, if the charge point is free (see ChargePointBehaviour.connect_vehicle)."""
        with self._lock:
            self._log(
                self.behaviour.connect_vehicle(
                    phases,
                    max_current_a=max_current_a,
                    energy_needed_wh=energy_needed_wh,
                    stay_s=stay_s,
                    prepare_s=prepare_s,
                )
            )
            self._version += 1

    def unplug_vehicle(self) -> None:
        """The driver unplugs now."""
        with self._lock:
            self._log(self.behaviour.unplug_vehicle())
            self._version += 1

    @property
    def last_writes(self) -> list[AcceptedWrite]:
        """The latest accepted writes, oldest first."""
        with self._lock:
            return list(self._writes)

    @property
    def requests_received(self) -> list[ArrivedRequest]:
        """The latest requests as they arrived, oldest first (to check a client's pacing)."""
        with self._lock:
            return list(self._requests)

    @property
    def heartbeats_received(self) -> dict[str, int]:
        """Accepted writes to each of the profile's heartbeat registers."""
        with self._lock:
            return dict(self._heartbeats)

    @property
    def last_heartbeat_at(self) -> dict[str, datetime]:
        """When each heartbeat register was last written."""
        with self._lock:
            return dict(self._heartbeat_at)

    @property
    def served_status(self) -> StatusPair:
        """The (operator status, IEC 61851 state) the status registers show now."""
        with self._lock:
            return self._status()[0]

    def register_values(self) -> dict[str, Value]:
        """The engineering value served for every register (before encoding)."""
        with self._lock:
            return self._register_values()

    # --- time ---------------------------------------------------------------------------
    def tick(self, dt_s: float) -> list[BehaviourEvent]:
        """Advance the behaviour by dt_s real seconds and log what happened."""
        with self._lock:
            self._check_watchdog()
            events = self.behaviour.tick(dt_s)
            self._version += 1
        for event in events:
            self._log(event)
        return events

    # --- the server ---------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on host:port (port 0: any free port, then `self.port` says which)."""
        if self.lean:
            lean = LeanServer(self)
            await lean.start()
            self._lean_server, self.port = lean, lean.port
            return
        devices = [
            SimDevice(id=unit_id, simdata=self._simdata(unit_id), action=functools.partial(self._action, unit_id))
            for unit_id in self.unit_ids or (self.unit_id,)
        ]
        server = ModbusTcpServer(devices, address=(self.host, self.port))
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
        lean, self._lean_server = self._lean_server, None
        if lean is not None:
            await lean.stop()
            return
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

    def _simdata(self, unit_id: int) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        """One SimData per contiguous run of addresses the action may answer, per object type."""
        blocks: list[list[SimData]] = []
        for function in _LAYOUT:
            space = self.image.space(unit_id, function)
            runs = _runs(sorted(space.valid)) if space else []
            if function in BIT_FUNCTIONS:
                block = [SimData(a, values=[False] * n, datatype=DataType.BITS) for a, n in runs]
                # pymodbus needs a block per type; the action refuses bits the profile lacks.
                blocks.append(block or [SimData(0, values=[False] * 16, datatype=DataType.BITS)])
            else:
                block = [SimData(a, count=n, datatype=DataType.REGISTERS) for a, n in runs]
                blocks.append(block or [SimData(0, datatype=DataType.INVALID)])
        return blocks[0], blocks[1], blocks[2], blocks[3]

    async def _action(
        self,
        unit_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook, called for every request after its own address check."""
        if set_values is not None or function_code != _WRITE_SINGLE_REGISTER:  # not an FC06 echo
            with self._lock:
                self._requests.append(
                    ArrivedRequest(time.monotonic(), function_code, address, count, set_values is not None)
                )
                self._request_arrived()
        function = FUNCTION_BY_CODE.get(function_code)
        if function is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            return self._write(unit_id, function, address, set_values)
        if function_code == _WRITE_SINGLE_REGISTER:
            # pymodbus reads an accepted FC06 write back for its echo: answer with what was written
            # (write-only registers included, which a real read would refuse).
            return None
        refused = self.image.check_read(unit_id, function, address, count)
        if refused is not None:
            return refused
        # The whole space, encoded once per change of state (bit requests come with the count in words).
        words = self.served_words(unit_id, function)
        for addr, word in words.items():
            if function in BIT_FUNCTIONS:
                index, bit = addr // 16 - start_address, addr % 16
                if 0 <= index < len(current_registers):
                    mask = 1 << bit
                    value = current_registers[index]
                    current_registers[index] = (value | mask) if word else (value & ~mask)
            elif 0 <= addr - start_address < len(current_registers):
                current_registers[addr - start_address] = int(word)
        return None

    def read_words(self, unit_id: int, function: str, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        """The words (or bits) a read returns, or the exception code it is answered with (the lean server's read)."""
        with self._lock:
            self._requests.append(ArrivedRequest(time.monotonic(), _READ_CODES[function], address, count, False))
            self._request_arrived()
        refused = self.image.check_read(unit_id, function, address, count)
        if refused is not None:
            return refused
        words = self.served_words(unit_id, function)
        if function in BIT_FUNCTIONS:
            return [bool(words.get(a, False)) for a in range(address, address + count)]
        return [int(words[a]) for a in range(address, address + count)]

    def write_words(
        self, unit_id: int, function_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        """Take a write (None) or refuse it with an exception code (the lean server's write)."""
        with self._lock:
            self._requests.append(ArrivedRequest(time.monotonic(), function_code, address, len(values), True))
            self._request_arrived()
        return self._write(unit_id, FUNCTION_BY_CODE[function_code], address, values)

    def served_words(self, unit_id: int, function: str) -> dict[int, int | bool]:
        """Every readable word (or bit) of one address space, encoded once per change of state."""
        with self._lock:
            self._check_watchdog()
            version = self._version
            cached = self._encoded.get((unit_id, function))
            if cached is not None and cached[0] == version:
                return cached[1]
            values = self._register_values()
        words = self.image.words(unit_id, function, values)
        with self._lock:
            self._encoded[(unit_id, function)] = (version, words)
        return words

    def _write(self, unit_id: int, function: str, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        try:
            accepted = self.image.check_write(unit_id, function, address, list(values))
        except WriteRefused as exc:
            logger.info("%s: write refused at unit %s %s %s: %s", self.name, unit_id, function, address, exc)
            return exc.code
        with self._lock:
            for name, value in accepted.items():
                self._apply_write(self.profile.register(name), value)
        return None

    def _apply_write(self, register: RegisterSpec, value: Value) -> None:
        """Take one accepted write; the caller holds the lock."""
        name = register.name
        self._writes.append(AcceptedWrite(name, value))
        if name in self._heartbeat_targets:
            self._heartbeats[name] = self._heartbeats.get(name, 0) + 1
            self._heartbeat_at[name] = datetime.now(UTC)
        # Watchdog writes arrive every few seconds: only operator-visible writes go to INFO.
        level = logging.DEBUG if name in self._heartbeat_targets else logging.INFO
        if self._ignore_writes:
            logger.log(level, "%s: %s write of %s acknowledged and ignored", self.name, name, value)
            return
        self._version += 1
        self._written[name] = value
        effects = self.image.effects
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.on_write(name, value, self._clock())
        if name in effects.limit_registers and isinstance(value, int | float) and not isinstance(value, bool):
            self._limit_a = float(value)
            if watchdog is not None and watchdog.active:
                watchdog.on_limit_written(self._clock())
                logger.info("%s: failsafe ended by a new limit of %s A", self.name, value)
            self._log(self.behaviour.set_max_current(self._limit_a if self._enabled else 0.0))
        else:
            enabled = effects.switch(name, value)
            if enabled is not None:
                # A resume restores the limit set before the pause (kept in _limit_a meanwhile).
                self._enabled = enabled
                self._log(self.behaviour.set_max_current(self._limit_a if enabled else 0.0))
        logger.log(level, "%s: %s set to %s", self.name, name, value)

    # --- helpers (callers hold the lock) ---------------------------------------------------
    def _request_arrived(self) -> None:
        """Any request refreshes a watchdog that has no heartbeat register (ABB), if it comes in time."""
        if self._watchdog is not None and not self._ignore_writes:
            self._check_watchdog()
            self._watchdog.on_request(self._clock())

    def _check_watchdog(self) -> None:
        """Fall back to the failsafe current once the watchdog lapsed (on every tick and read)."""
        watchdog = self._watchdog
        if watchdog is None or not watchdog.check(self._clock()):
            return
        self._limit_a = watchdog.fallback_current_a
        self._version += 1
        logger.warning(
            "%s: no communication for %s s, falling back to the failsafe current of %s A",
            self.name,
            f"{watchdog.timeout_s:g}",
            f"{self._limit_a:g}",
        )
        self._log(self.behaviour.set_max_current(self._limit_a if self._enabled else 0.0))

    def _status(self) -> tuple[StatusPair, dict[str, Value]]:
        if self._status_override is not None:
            return self.image.status.values_for(*self._status_override)
        return self.image.status.values_for(self.behaviour.status, self.behaviour.iec61851_state)

    def _register_values(self) -> dict[str, Value]:
        """Engineering values by register name, in order of precedence."""
        by_role: dict[str, Value] = dict(self.behaviour.values())
        pair, status_values = self._status()
        iec_state = pair[1]
        setpoints = self.image.effects.setpoint_registers
        values: dict[str, Value] = {}
        for register in self.profile.registers:
            name, role = register.name, register.role
            if name in status_values:
                values[name] = status_values[name]
            elif role == Role.IEC61851_STATE:
                values[name] = iec_state_code(register, iec_state)
            elif name in setpoints and role not in self._behaviour_roles:
                values[name] = self._limit_a  # a readable setpoint (Alfen 1210, ABB 4022h) reads what was set
            elif name in self._written and role not in self._behaviour_roles:
                values[name] = self._written[name]
            elif role in by_role:
                values[name] = by_role[role]
            elif name in self._identity:
                values[name] = self._identity[name]
            else:
                values[name] = self._plausible[name]
        shows = self._command_shows()
        if shows is not None and not shows.matches(values.get(shows.register)):
            values[shows.register] = self.image.shown(shows, pair, status_values)
        if self._watchdog is not None:
            values.update(self._watchdog.readback_values())
        values.update(self._overrides)
        return values

    def _command_shows(self) -> Shows | None:
        """The verified register of the pause or resume in effect, unless a fault or a pinned status outranks it."""
        behaviour = self.behaviour
        if self._status_override is not None or behaviour.phase == Phase.FAULTED:
            return None
        if behaviour.max_current_a < MIN_CHARGE_CURRENT_A:
            return self.image.effects.paused_shows
        # "Charging again" needs a vehicle that wants to charge: otherwise the charger shows why not.
        return self.image.effects.resumed_shows if behaviour.phase == Phase.CHARGING else None

    def _register(self, name: str) -> RegisterSpec:
        for register in self.profile.registers:
            if register.name == name:
                return register
        register = self.profile.register_for(name) if name else None
        if register is None:
            what = "role" if name in Role.values else "register or role"
            raise KeyError(f"profile {self.profile.slug} has no {what} {name!r}")
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
