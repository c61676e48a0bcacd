"""What a simulated charger of one profile answers: its address spaces, words and write checks.

Pure (no I/O). A ProfileImage is built once per (profile, unit id) and shared by every charge
point serving that profile; the server asks it for the words of each read and to check each write.

What is answered, per unit id and object type:
- reads of readable registers, and of every address inside a read the poller plans for the
  profile (fast, slow, and both together), gaps included (served as 0, or 0xFFFF with the
  nan_unavailable hint), so that a planned read never fails;
- everything else, write-only registers included, is ILLEGAL DATA ADDRESS on read;
- a profile with a fixed read size (KEBA: exactly 2 registers) refuses reads of any other size,
  or not starting at a register, with ILLEGAL DATA ADDRESS: the Modbus spec's exception 02 is for
  an address + quantity combination the device does not serve (03 is for a quantity outside
  1..125, which pymodbus already checks);
- writes must cover whole writable registers: a read-only register, an undefined address or
  part of a multi-register value (Alfen: a float32 in one FC16 request) is ILLEGAL DATA ADDRESS;
  a value check_write_range refuses (write_min..write_max, write_values) is ILLEGAL DATA VALUE.
"""

import random
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes

from gateway.choices import DataType, Function, PollGroup
from gateway.modbus.planner import plan_reads
from gateway.profiles.codec import DecodeError, Value, decode_value
from gateway.profiles.decode import resolve_status, scaled
from gateway.profiles.encode import WriteRangeError, check_write_range
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.simulator.encoding import (
    NOT_AVAILABLE_WORD,
    TEXT_TYPES,
    SimulatorHints,
    encode_register,
)
from gateway.simulator.status import StatusCodes, StatusPair
from gateway.simulator.writes import Shows, WriteEffects

# Modbus function code → the object type it reads or writes.
FUNCTION_BY_CODE: dict[int, str] = {
    1: Function.COIL,
    5: Function.COIL,
    15: Function.COIL,
    2: Function.DISCRETE_INPUT,
    3: Function.HOLDING,
    6: Function.HOLDING,
    16: Function.HOLDING,
    22: Function.HOLDING,
    23: Function.HOLDING,
    4: Function.INPUT,
}
BIT_FUNCTIONS = (Function.COIL, Function.DISCRETE_INPUT)
_MIRRORED = {Function.HOLDING: Function.INPUT, Function.INPUT: Function.HOLDING}
_NUMERIC_SERIAL_MAX = 10**9
ENCODED_MEMO_SIZE = 50_000  # remembered encodings per image
# A space's gap words, and its readable registers each with whether it shares a word with an earlier one.
WordLayout = tuple[dict[int, int | bool], list[tuple[RegisterSpec, bool]]]


class WriteRefused(Exception):
    """A write the charger answers with a Modbus exception."""

    def __init__(self, code: ExcCodes, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class AddressSpace:
    """One unit id's registers of one object type."""

    own: list[RegisterSpec] = field(default_factory=list)  # declared here: the ones that take writes
    served: list[RegisterSpec] = field(default_factory=list)  # read here: own, plus mirrored ones
    readable: set[int] = field(default_factory=set)
    read_starts: set[int] = field(default_factory=set)

    @property
    def valid(self) -> set[int]:
        """Addresses pymodbus must let through to the action (which then decides)."""
        return self.readable | {register.address + i for register in self.own for i in range(register.count)}


class ProfileImage:
    """How a charger of `profile` with unit id `unit_id` answers reads and writes."""

    def __init__(self, profile: ProfileSpec, unit_id: int) -> None:
        self.profile = profile
        self.unit_id = unit_id
        self.hints = SimulatorHints.from_profile(profile)
        self.status = StatusCodes(profile, self.hints)
        self.effects = WriteEffects.from_profile(profile, self.hints)
        self._shown: dict[tuple[str, tuple[float, ...], StatusPair], Value] = {}
        self.spaces: dict[tuple[int, str], AddressSpace] = {}
        self._encoded: dict[tuple[object, ...], list[int] | list[bool]] = {}
        self._layouts: dict[tuple[int, str], WordLayout] = {}
        for register in profile.registers:
            space = self._space(self.unit_of(register.unit_id), register.function)
            space.own.append(register)
            space.served.append(register)
            if register.readable:
                space.readable.update(register.address + i for i in range(register.count))
                space.read_starts.add(register.address)
        for groups in ((PollGroup.FAST,), (PollGroup.SLOW,), (PollGroup.FAST, PollGroup.SLOW)):
            for request in plan_reads(profile, groups):
                space = self._space(self.unit_of(request.unit_id), request.function)
                space.readable.update(range(request.address, request.address + request.count))
                space.read_starts.add(request.address)
        if self.hints.mirror_functions:
            self._mirror()

    @property
    def unit_ids(self) -> tuple[int, ...]:
        """Every unit id the charger answers on (Alfen: the socket's and the station's 200)."""
        return tuple(sorted({unit for unit, _ in self.spaces}))

    def unit_of(self, unit_id: int | None) -> int:
        """A register's or read's unit id; None means the charge point's own."""
        return self.unit_id if unit_id is None else unit_id

    def space(self, unit_id: int, function: str) -> AddressSpace | None:
        return self.spaces.get((unit_id, function))

    # --- reads ------------------------------------------------------------------------------
    def check_read(self, unit_id: int, function: str, address: int, count: int) -> ExcCodes | None:
        """None if the charger answers this read, else the exception code it answers with.

        For bit reads pymodbus passes the count in 16-bit words, so only the start is checked.
        """
        space = self.space(unit_id, function)
        if space is None or address not in space.readable:
            return ExcCodes.ILLEGAL_ADDRESS
        if function in BIT_FUNCTIONS:
            return None
        fixed = self.profile.fixed_read_size
        if fixed and (count != fixed or address not in space.read_starts):
            return ExcCodes.ILLEGAL_ADDRESS
        if any(a not in space.readable for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def words(
        self, unit_id: int, function: str, values: dict[str, Value], span: range | None = None
    ) -> dict[int, int | bool]:
        """Readable words (or bits) of one space, all or those in `span`, for values keyed by register name."""
        space = self.space(unit_id, function)
        if space is None:
            return {}
        layout = self._layouts.get((unit_id, function))
        if layout is None:
            layout = self._layouts[(unit_id, function)] = self._layout(space, function)
        gaps, registers = layout
        words = (
            dict(gaps) if span is None else {address: gaps[address] for address in space.readable.intersection(span)}
        )
        for register, shares_word in registers:
            address = register.address
            if span is not None and (address >= span.stop or address + register.count <= span.start):
                continue
            # 'bit' values share their word with others: start from what is already placed there.
            current = int(words[address]) if shares_word else 0
            for index, word in enumerate(self._encode(register, values.get(register.name), current)):
                words[address + index] = word
        return words

    def _layout(
        self, space: AddressSpace, function: str
    ) -> tuple[dict[int, int | bool], list[tuple[RegisterSpec, bool]]]:
        """A space's gap words, and its readable registers in order, each with whether an earlier one
        already placed a word at its address (worked out once: words() runs on every change of state)."""
        bits = function in BIT_FUNCTIONS
        gap: int | bool = False if bits else (NOT_AVAILABLE_WORD if self.hints.nan_unavailable else 0)
        placed: set[int] = set()
        registers: list[tuple[RegisterSpec, bool]] = []
        for register in space.served:
            if register.readable:
                registers.append((register, register.address in placed))
                placed.update(range(register.address, register.address + register.count))
        return dict.fromkeys(space.readable, gap), registers

    def _encode(self, register: RegisterSpec, value: Value, current: int) -> list[int] | list[bool]:
        """encode_register, remembered: a fleet of one profile shows the same few values over and over
        (identity, status codes, 0 A, voltages to 0.1 V), and encoding one costs microseconds."""
        # The value's type and a float's exact bits are part of the key: 1 == 1.0 == True, and
        # -0.0 == 0.0 hash alike but may encode differently.
        key = (register.name, type(value), value.hex() if type(value) is float else value, current)
        encoded = self._encoded.get(key)
        if encoded is None:
            if len(self._encoded) >= ENCODED_MEMO_SIZE:
                self._encoded.clear()  # energy counters never repeat: start over rather than grow
            encoded = self._encoded[key] = encode_register(register, value, self.hints, current)
        return encoded

    def shown(self, shows: Shows, pair: StatusPair, status_values: dict[str, Value]) -> Value:
        """What a verified register shows for a command in effect: the first expected value that
        keeps the status the status registers show (worked out once per status)."""
        key = (shows.register, shows.values, pair)
        value = self._shown.get(key)
        if value is None:
            candidates = shows.candidates
            value = candidates[0]
            if shows.register in status_values:
                for candidate in candidates:
                    status, iec_state, problem = resolve_status(
                        self.profile, {**status_values, shows.register: candidate}
                    )
                    if problem is None and (status, iec_state) == pair:
                        value = candidate
                        break
            self._shown[key] = value
        return value

    # --- writes -----------------------------------------------------------------------------
    def check_write(self, unit_id: int, function: str, address: int, words: list[int] | list[bool]) -> dict[str, Value]:
        """Decode a write into engineering values by register name, or raise WriteRefused."""
        space = self.space(unit_id, function)
        end = address + len(words)
        touched = [r for r in (space.own if space else []) if r.address < end and r.address + r.count > address]
        covered = {r.address + i for r in touched for i in range(r.count)}
        if not touched or not covered.issuperset(range(address, end)):
            raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, "write to an undefined address")
        accepted: dict[str, Value] = {}
        for register in touched:
            if not register.writable:
                raise WriteRefused(ExcCodes.ILLEGAL_ADDRESS, f"{register.name} is read-only")
            if register.address < address or register.address + register.count > end:
                raise WriteRefused(
                    ExcCodes.ILLEGAL_ADDRESS, f"partial write to {register.name}: write all its registers at once"
                )
            first = register.address - address
            chunk = [int(w) for w in words[first : first + register.count]]
            try:
                raw = decode_value(
                    register.data_type, chunk, register.byte_order, bit=register.bit, encoding=register.encoding
                )
            except DecodeError as exc:
                raise WriteRefused(ExcCodes.ILLEGAL_VALUE, str(exc)) from exc
            value = scaled(register, raw)
            _check_range(register, value)
            accepted[register.name] = value
        return accepted

    # --- building -------------------------------------------------------------------------------
    def _space(self, unit_id: int, function: str) -> AddressSpace:
        return self.spaces.setdefault((unit_id, function), AddressSpace())

    def _mirror(self) -> None:
        """Serve holding registers on FC04 and input registers on FC03 too (where free)."""
        units = {unit for unit, _ in self.spaces}
        originals = {
            key: (list(space.served), set(space.readable), set(space.read_starts)) for key, space in self.spaces.items()
        }
        for unit in units:
            for function, other in _MIRRORED.items():
                if (unit, other) not in originals:
                    continue
                served, readable, starts = originals[(unit, other)]
                space = self._space(unit, function)
                taken = {r.address + i for r in space.served for i in range(r.count)}
                space.served += [r for r in served if not taken & {r.address + i for i in range(r.count)}]
                space.readable |= readable
                space.read_starts |= starts


def _check_range(register: RegisterSpec, value: Value) -> None:
    bounded = register.write_min is not None or register.write_max is not None or bool(register.write_values)
    if not bounded:
        return
    if not isinstance(value, int | float):
        raise WriteRefused(ExcCodes.ILLEGAL_VALUE, f"{register.name}: {value!r} is not a number")
    try:
        check_write_range(register, float(value))
    except WriteRangeError as exc:
        raise WriteRefused(ExcCodes.ILLEGAL_VALUE, str(exc)) from exc


def identity_values(profile: ProfileSpec, rng: random.Random, name: str = "") -> dict[str, Value]:
    """Plausible identity values (serial number, firmware, ...) for the registers without a role."""
    serial = f"EVD{rng.randrange(10**8):08d}"
    firmware = f"{rng.choice((1, 2))}.{rng.randrange(10)}.{rng.randrange(20)}"
    values: dict[str, Value] = {}
    for register in profile.registers:
        if register.role or register.enum:
            continue
        key = register.name.lower()
        if register.data_type not in TEXT_TYPES:
            # Numeric serial numbers (KEBA, Mennekes): a number that fits the register.
            if "serial" in key and register.data_type in (DataType.UINT32, DataType.UINT64, DataType.INT32):
                values[register.name] = rng.randrange(10**7, _NUMERIC_SERIAL_MAX)
            continue
        if "serial" in key:
            text = serial
        elif "firmware" in key or "version" in key or key.startswith("fw"):
            text = firmware
        elif "model" in key or "product" in key or "platform" in key:
            text = profile.model or profile.name
        elif "vendor" in key or "manufacturer" in key or "brand" in key:
            text = profile.vendor or "evdash"
        elif name and ("name" in key or "chargepoint_id" in key):
            text = name
        else:
            continue
        values[register.name] = text
    return values
