"""Immutable profile specs: what the poller, the simulator and the tools work from (no ORM, no I/O).

The same JSON shape is the shipped-profile file format and the import/export format
(documented in docs/profiles.md).
"""

import json
import math
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, get_args, get_origin

from gateway.choices import Access, ByteOrder, DataType, Function, PollGroup, StatusMatch, StringEncoding
from gateway.profiles.codec import register_count

MAX_PACING_GAP_MS = 60_000  # a larger gap is a typo (seconds for ms), not a vendor's request


class ProfileFormatError(ValueError):
    """A profile document that does not have the documented shape."""


@dataclass(frozen=True)
class RegisterSpec:
    """One value of a register map."""

    name: str
    address: int
    function: str = Function.HOLDING
    data_type: str = DataType.UINT16
    length: int = 1
    bit: int | None = None
    mask: int | None = None
    byte_order: str = ByteOrder.ABCD
    encoding: str = StringEncoding.ASCII
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    role: str = ""
    access: str = Access.READ
    write_min: float | None = None
    write_max: float | None = None
    # Single values allowed besides write_min..write_max (e.g. [0]: 0 A pauses), or the only
    # values allowed when there is no range (enable flags, life bits); see check_write_range.
    write_values: tuple[float, ...] = ()
    poll_group: str = PollGroup.FAST
    unavailable: int | None = None
    unit_id: int | None = None
    enum: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        # JSON and the database hand over lists; a tuple keeps the spec hashable and comparable.
        if isinstance(self.write_values, list):
            object.__setattr__(self, "write_values", tuple(self.write_values))

    @property
    def count(self) -> int:
        """Registers (or bits) this value occupies."""
        return register_count(self.data_type, self.length)

    @property
    def is_bit_function(self) -> bool:
        return self.function in (Function.COIL, Function.DISCRETE_INPUT)

    @property
    def readable(self) -> bool:
        return self.access != Access.WRITE

    @property
    def writable(self) -> bool:
        return self.access in (Access.READ_WRITE, Access.WRITE)


@dataclass(frozen=True)
class StatusRule:
    """If register `register` decodes to `code` (or, with match "is_not", to anything else), the
    charge point is in this state.

    Rules are tried in order and the first match wins, so several registers combine by their
    order: fault rules first, then unavailable ones, then connector states (docs/profiles.md).
    """

    register: str
    code: str
    iec61851_state: str
    status: str
    description: str = ""
    match: str = StatusMatch.IS


@dataclass(frozen=True)
class Heartbeat:
    """A watchdog write the poller repeats so the charger keeps its current limit."""

    register: str
    interval_s: float
    value: float | None = None
    value_from: str | None = None  # write back the last read value of this register
    description: str = ""


@dataclass(frozen=True)
class CommandSpec:
    """How a charger model carries out one operator command (docs/profiles.md, "Commands").

    The poller writes `value` (or the command's own value) to `register`, waits `settle_s`, reads
    `verify_register` back and compares: applied only if the charger shows it did it.
    """

    action: str  # a CommandAction value
    register: str = ""  # the register written; "" when unsupported
    # Written as is (a pause or resume flag); None: the command's value, i.e. the limit asked for
    # (set_current_limit) or, for a resume, the limit held (the operator's, else max_value of the
    # profile's set_current_limit).
    value: float | None = None
    min_value: float | None = None  # set_current_limit: the range an operator may ask for, in A
    max_value: float | None = None
    verify_register: str = ""  # read back after settle_s; "" = `register` itself (if readable)
    verify_value: float | None = None  # the read-back expected; None = the value written
    verify_values: tuple[float, ...] = ()  # or: any of these (e.g. the status codes of "not charging")
    tolerance: float = 0.0  # |read back - expected| allowed (float registers, mA rounding)
    settle_s: float = 1.0  # what the charger needs to apply it (vendor doc, else measured or evcc's wait)
    unsupported: str = ""  # why the charger has no such command (then register is "")
    source: str = ""  # source ids of the profile's `source`, with pages or sections
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.verify_values, list):
            object.__setattr__(self, "verify_values", tuple(self.verify_values))

    @property
    def supported(self) -> bool:
        return bool(self.register) and not self.unsupported


@dataclass(frozen=True)
class ReadBlock:
    """An explicit read a quirky charger insists on; registers inside it are read with it."""

    function: str
    address: int
    count: int
    unit_id: int | None = None


@dataclass(frozen=True)
class ProfileSpec:
    """A charger model's register map, status rules and quirks."""

    slug: str
    name: str
    registers: tuple[RegisterSpec, ...]
    status_rules: tuple[StatusRule, ...] = ()
    vendor: str = ""
    model: str = ""
    source: str = ""
    notes: str = ""
    default_port: int = 502
    default_unit_id: int = 1
    max_gap: int = 8
    max_read_registers: int = 125
    fixed_read_size: int | None = None
    read_blocks: tuple[ReadBlock, ...] = ()
    derived: tuple[str, ...] = ()
    heartbeats: tuple[Heartbeat, ...] = ()
    commands: tuple[CommandSpec, ...] = ()
    simulator: dict[str, Any] = field(default_factory=dict)
    # Vendor pacing (docs/profiles.md "Pacing"): the least time from one request's answer to the
    # next request, and from one write's answer to the next write; 0 = back to back.
    request_gap_ms: int = 0
    write_gap_ms: int = 0
    pacing_source: str = ""  # where the vendor asks for it (a source id of `source`)

    def register(self, name: str) -> RegisterSpec:
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(name)

    def command(self, action: str) -> CommandSpec | None:
        """How this charger does `action` (a CommandAction value); None if the profile does not say."""
        for command in self.commands:
            if command.action == action:
                return command
        return None

    def register_for(self, role: str) -> RegisterSpec | None:
        """The register that feeds a telemetry role, if the profile has one."""
        for register in self.registers:
            if register.role == role:
                return register
        return None

    @property
    def status_registers(self) -> tuple[str, ...]:
        """Registers the status rules look at, in first-use order."""
        return tuple(dict.fromkeys(rule.register for rule in self.status_rules))

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form (profiles export)."""
        data = asdict(self)
        data["registers"] = [
            {**compacted, **({"write_values": list(reg.write_values)} if "write_values" in compacted else {})}
            for reg in self.registers
            for compacted in [_compact(asdict(reg), _REGISTER_DEFAULTS)]
        ]
        data["status_rules"] = [
            _compact(asdict(rule), {"description": "", "match": StatusMatch.IS}) for rule in self.status_rules
        ]
        data["heartbeats"] = [_compact(asdict(hb), _HEARTBEAT_DEFAULTS) for hb in self.heartbeats]
        data["read_blocks"] = [_compact(asdict(block), {"unit_id": None}) for block in self.read_blocks]
        data["commands"] = [
            {**compacted, **({"verify_values": list(cmd.verify_values)} if "verify_values" in compacted else {})}
            for cmd in self.commands
            for compacted in [_compact(asdict(cmd), _COMMAND_DEFAULTS)]
        ]
        data["derived"] = list(self.derived)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "ProfileSpec":
        """Build a spec from the documented JSON form; raises ProfileFormatError on a bad shape.

        Every field is checked against its type here, so the checks that follow (and the poller)
        never meet a string where a number belongs, an unknown key, or a number too large to use.
        """
        if not isinstance(data, dict):
            raise ProfileFormatError(f"a profile is a JSON object, got {_show(data)}")
        _refuse_unknown(cls, data, "the profile")
        missing = [name for name in ("slug", "name") if name not in data]
        if missing:
            raise ProfileFormatError(f"missing field(s) {', '.join(missing)} in the profile")
        scalars = {
            f.name: _checked(data[f.name], f.type, f"field {f.name!r}")
            for f in fields(cls)
            if f.name in data and f.name not in (*_ENTRY_KINDS, "derived")
        }
        rules = data.get("status_rules", [])
        return cls(
            registers=entries_from_json(RegisterSpec, data.get("registers", []), "registers"),
            status_rules=entries_from_json(
                StatusRule,
                [_code_as_text(rule) for rule in rules] if isinstance(rules, list) else rules,
                "status_rules",
            ),
            read_blocks=entries_from_json(ReadBlock, data.get("read_blocks", []), "read_blocks"),
            heartbeats=entries_from_json(Heartbeat, data.get("heartbeats", []), "heartbeats"),
            commands=entries_from_json(CommandSpec, data.get("commands", []), "commands"),
            derived=derived_from_json(data.get("derived", [])),
            **scalars,
        )


# The list fields of a profile and the kind of their entries.
_ENTRY_KINDS = {
    "registers": RegisterSpec,
    "status_rules": StatusRule,
    "read_blocks": ReadBlock,
    "heartbeats": Heartbeat,
    "commands": CommandSpec,
}


def entries_from_json(kind: type, items: Any, where: str) -> tuple[Any, ...]:
    """The entries of one list field (registers, read_blocks, ...), each checked field by field."""
    if not isinstance(items, list):
        raise ProfileFormatError(f"{where!r} must be a JSON list, got {_show(items)}")
    return tuple(_build(kind, item, f"{where}[{index}]") for index, item in enumerate(items))


def derived_from_json(items: Any) -> tuple[str, ...]:
    """The `derived` field: a list of role names (which roles may be derived is validate.py's business)."""
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ProfileFormatError(f"'derived' must be a JSON list of role names, got {_show(items)}")
    return tuple(items)


def _build(kind: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ProfileFormatError(f"{where} must be a JSON object, got {_show(data)}")
    if isinstance(data.get("name"), str):
        where = f"{where} ({data['name']!r})"
    _refuse_unknown(kind, data, where)
    required = [f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ProfileFormatError(f"missing field(s) {', '.join(missing)} in {where}")
    types = {f.name: f.type for f in fields(kind)}
    return kind(**{name: _checked(value, types[name], f"{where} field {name!r}") for name, value in data.items()})


def _refuse_unknown(kind: type, data: dict[str, Any], where: str) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(kind)})
    if unknown:
        raise ProfileFormatError(f"unknown field(s) {', '.join(map(repr, unknown))} in {where}")


def _code_as_text(rule: Any) -> Any:
    """Status codes may be written as JSON numbers; rules compare them as text."""
    if isinstance(rule, dict) and isinstance(rule.get("code"), int) and not isinstance(rule["code"], bool):
        return {**rule, "code": str(rule["code"])}
    return rule


def _checked(value: Any, annotation: Any, where: str) -> Any:
    """`value` if it has the JSON type the annotation asks for; ProfileFormatError naming `where` if not."""
    if annotation is Any:
        return value
    if isinstance(annotation, types.UnionType):
        options = [option for option in get_args(annotation) if option is not type(None)]
        return None if value is None else _checked(value, options[0], where)
    origin = get_origin(annotation) or annotation
    if origin is dict:
        if not isinstance(value, dict):
            raise ProfileFormatError(f"{where} must be a JSON object, got {_show(value)}")
        value_type = get_args(annotation)[1] if get_args(annotation) else Any
        return {key: _checked(item, value_type, f"{where}[{key!r}]") for key, item in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise ProfileFormatError(f"{where} must be a JSON list, got {_show(value)}")
        item_type = get_args(annotation)[0] if get_args(annotation) else Any
        return tuple(_checked(item, item_type, f"{where}[{index}]") for index, item in enumerate(value))
    if origin is str:
        if not isinstance(value, str):
            raise ProfileFormatError(f"{where} must be text, got {_show(value)}")
        return value
    if origin is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProfileFormatError(f"{where} must be a whole number, got {_show(value)}")
        return value
    if origin is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ProfileFormatError(f"{where} must be a number, got {_show(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:
            finite = False  # an integer too large for a float
        if not finite:
            raise ProfileFormatError(f"{where} must be a finite number of sensible size, got {_show(value)}")
        return value
    raise ProfileFormatError(f"{where}: cannot check a value of type {annotation}")  # a new field type: teach _checked


def _show(value: Any) -> str:
    """A short description of an offending value for an error message."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'list'}"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = (
        repr(value) if not isinstance(value, int) or abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
    )
    return text if len(text) <= 60 else text[:57] + "..."


_REGISTER_DEFAULTS = asdict(RegisterSpec(name="", address=0))
_COMMAND_DEFAULTS = {key: value for key, value in asdict(CommandSpec(action="")).items() if key != "action"}
_HEARTBEAT_DEFAULTS = {"value": None, "value_from": None, "description": ""}


def _compact(item: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Drop fields that hold their default, so exported files stay readable."""
    return {key: value for key, value in item.items() if key not in defaults or value != defaults[key]} | {
        key: item[key] for key in ("name", "address") if key in item
    }
