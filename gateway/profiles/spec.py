"""Immutable profile specs: what the poller, the simulator and the tools work from (no ORM, no I/O).

The same JSON shape is the shipped-profile file format and the import/export format
(documented in docs/profiles.md).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.choices import Access, ByteOrder, DataType, Function, PollGroup
from gateway.profiles.codec import register_count


@dataclass(frozen=True)
class RegisterSpec:
    """One value of a register map."""

    name: str
    address: int
    function: str = Function.HOLDING
    data_type: str = DataType.UINT16
    length: int = 1
    bit: int | None = None
    byte_order: str = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    role: str = ""
    access: str = Access.READ
    write_min: float | None = None
    write_max: float | None = None
    poll_group: str = PollGroup.FAST
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
    def writable(self) -> bool:
        return self.access == Access.READ_WRITE


@dataclass(frozen=True)
class StatusSpec:
    """A vendor status code's meaning."""

    iec61851_state: str
    status: str
    description: str = ""


@dataclass(frozen=True)
class ProfileSpec:
    """A charger model's register map and status table."""

    slug: str
    name: str
    registers: tuple[RegisterSpec, ...]
    status_codes: dict[int, StatusSpec] = field(default_factory=dict)
    vendor: str = ""
    model: str = ""
    source: str = ""
    notes: str = ""
    max_gap: int = 8

    def register_for(self, role: str) -> RegisterSpec | None:
        """The register that feeds a telemetry role, if the profile has one."""
        for register in self.registers:
            if register.role == role:
                return register
        return None

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form (profiles export)."""
        data = asdict(self)
        data["registers"] = [_compact(asdict(reg)) for reg in self.registers]
        data["status_codes"] = [
            {"code": code, **asdict(spec)} for code, spec in sorted(self.status_codes.items())
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileSpec":
        """Build a spec from the documented JSON form; raises KeyError/TypeError on bad shape."""
        registers = tuple(RegisterSpec(**reg) for reg in data.get("registers", []))
        status_codes = {
            int(entry["code"]): StatusSpec(
                entry["iec61851_state"], entry["status"], entry.get("description", "")
            )
            for entry in data.get("status_codes", [])
        }
        known = {"vendor", "model", "source", "notes", "max_gap"}
        return cls(
            slug=data["slug"],
            name=data["name"],
            registers=registers,
            status_codes=status_codes,
            **{key: data[key] for key in known if key in data},
        )


_DEFAULTS = asdict(RegisterSpec(name="", address=0))


def _compact(register: dict[str, Any]) -> dict[str, Any]:
    """Drop fields that hold their default, so exported files stay readable."""
    return {
        key: value for key, value in register.items() if key in ("name", "address") or value != _DEFAULTS[key]
    }
