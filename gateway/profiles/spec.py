"""Immutable profile specs: what the poller, the simulator and the tools work from (no ORM, no I/O).

The same JSON shape is the shipped-profile file format and the import/export format
(documented in docs/profiles.md).
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gateway.choices import Access, ByteOrder, DataType, Function, PollGroup, StringEncoding
from gateway.profiles.codec import register_count


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
    poll_group: str = PollGroup.FAST
    unavailable: int | None = None
    unit_id: int | None = None
    enum: dict[str, str] = field(default_factory=dict)
    description: str = ""

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
    """If register `register` decodes to `code`, the charge point is in this state.

    Rules are tried in order and the first match wins, so several registers can combine
    (e.g. KEBA: no cable → A before the charging state is looked at).
    """

    register: str
    code: str
    iec61851_state: str
    status: str
    description: str = ""


@dataclass(frozen=True)
class Heartbeat:
    """A watchdog write the poller repeats so the charger keeps its current limit."""

    register: str
    interval_s: float
    value: float | None = None
    value_from: str | None = None  # write back the last read value of this register
    description: str = ""


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
    simulator: dict[str, Any] = field(default_factory=dict)

    def register(self, name: str) -> RegisterSpec:
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(name)

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
        data["registers"] = [_compact(asdict(reg), _REGISTER_DEFAULTS) for reg in self.registers]
        data["status_rules"] = [_compact(asdict(rule), {"description": ""}) for rule in self.status_rules]
        data["heartbeats"] = [_compact(asdict(hb), _HEARTBEAT_DEFAULTS) for hb in self.heartbeats]
        data["read_blocks"] = [_compact(asdict(block), {"unit_id": None}) for block in self.read_blocks]
        data["derived"] = list(self.derived)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileSpec":
        """Build a spec from the documented JSON form; raises ProfileFormatError on a bad shape."""
        if not isinstance(data, dict):
            raise ProfileFormatError("a profile is a JSON object")
        try:
            scalars = {
                f.name: data[f.name]
                for f in fields(cls)
                if f.name in data
                and f.name not in ("registers", "status_rules", "read_blocks", "derived", "heartbeats")
            }
            return cls(
                registers=tuple(_build(RegisterSpec, reg, "registers") for reg in data.get("registers", [])),
                status_rules=tuple(
                    _build(StatusRule, {**rule, "code": str(rule.get("code", ""))}, "status_rules")
                    for rule in data.get("status_rules", [])
                ),
                read_blocks=tuple(_build(ReadBlock, b, "read_blocks") for b in data.get("read_blocks", [])),
                heartbeats=tuple(_build(Heartbeat, hb, "heartbeats") for hb in data.get("heartbeats", [])),
                derived=tuple(data.get("derived", [])),
                **scalars,
            )
        except TypeError as exc:
            raise ProfileFormatError(str(exc)) from exc
        except KeyError as exc:
            raise ProfileFormatError(f"missing field {exc}") from exc


def _build(kind: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ProfileFormatError(f"each entry of {where!r} is a JSON object, got {data!r}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileFormatError(f"unknown field(s) {', '.join(unknown)} in {where} entry {data.get('name', '')!r}")
    try:
        return kind(**data)
    except TypeError as exc:
        raise ProfileFormatError(f"{where} entry {data.get('name', data)!r}: {exc}") from exc


_REGISTER_DEFAULTS = asdict(RegisterSpec(name="", address=0))
_HEARTBEAT_DEFAULTS = {"value": None, "value_from": None, "description": ""}


def _compact(item: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Drop fields that hold their default, so exported files stay readable."""
    return {key: value for key, value in item.items() if key not in defaults or value != defaults[key]} | {
        key: item[key] for key in ("name", "address") if key in item
    }
