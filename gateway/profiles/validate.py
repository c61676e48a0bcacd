"""Consistency rules of a profile: shared by the admin, `profiles import` and the shipped files."""

import itertools
from collections import Counter

from gateway.choices import (
    DERIVABLE_ROLES,
    Access,
    ByteOrder,
    DataType,
    Function,
    Iec61851State,
    OperatorStatus,
    PollGroup,
    Role,
    StringEncoding,
)
from gateway.profiles.codec import FIXED_LENGTHS, INTEGER_RANGES
from gateway.profiles.spec import ProfileSpec, RegisterSpec

BIT_FUNCTIONS = (Function.COIL, Function.DISCRETE_INPUT)
_CHOICES = {
    "function": Function,
    "data_type": DataType,
    "byte_order": ByteOrder,
    "encoding": StringEncoding,
    "access": Access,
    "poll_group": PollGroup,
}


def register_problems(reg: RegisterSpec) -> dict[str, str]:
    """Problems of one register, by field (the admin shows them beside the field)."""
    errors: dict[str, str] = {}
    for name, choices in _CHOICES.items():
        if getattr(reg, name) not in choices.values:
            errors[name] = f"Unknown {name.replace('_', ' ')} {getattr(reg, name)!r}."
    if reg.role and reg.role not in Role.values:
        errors["role"] = f"Unknown role {reg.role!r}."
    if errors:
        return errors
    if (reg.data_type == DataType.BOOL) != (reg.function in BIT_FUNCTIONS):
        errors["data_type"] = "Coils and discrete inputs hold type 'bool', and only they do."
    expected = FIXED_LENGTHS.get(reg.data_type)
    if expected is not None and reg.length != expected:
        errors["length"] = f"Type {reg.data_type} occupies {expected} register(s), not {reg.length}."
    if reg.data_type == DataType.BIT and reg.bit is None:
        errors["bit"] = "Type 'bit' needs the bit number (0-15)."
    if reg.mask is not None and (reg.data_type not in INTEGER_RANGES or reg.mask <= 0):
        errors["mask"] = "A bit-field mask needs an integer type and at least one bit set."
    if not 0 <= reg.address <= 65535:
        errors["address"] = "Address must be between 0 and 65535."
    elif reg.address + reg.count > 65536:
        errors["address"] = f"Address {reg.address} + {reg.count} register(s) runs past 65535."
    if reg.access == Access.READ and (reg.write_min is not None or reg.write_max is not None):
        errors["access"] = "A read-only register cannot have a write range."
    if reg.write_min is not None and reg.write_max is not None and reg.write_min > reg.write_max:
        errors["write_max"] = "Write maximum is below the write minimum."
    if not isinstance(reg.enum, dict):
        errors["enum"] = "Enum must be a JSON object of raw code → meaning."
    return errors


def overlapping(registers: list[RegisterSpec]) -> list[tuple[RegisterSpec, RegisterSpec]]:
    """Pairs of registers that claim the same address (same unit id and function)."""
    pairs = []
    ordered = sorted(registers, key=lambda r: (r.unit_id or -1, r.function, r.address))
    for first, second in itertools.pairwise(ordered):
        same_space = first.function == second.function and first.unit_id == second.unit_id
        if same_space and second.address < first.address + first.count:
            pairs.append((first, second))
    return pairs


def status_rule_problems(spec: ProfileSpec) -> list[str]:
    problems = []
    names = {reg.name for reg in spec.registers}
    for rule in spec.status_rules:
        if rule.register not in names:
            problems.append(f"status rule for unknown register {rule.register!r}")
        if rule.iec61851_state not in Iec61851State.values:
            problems.append(f"status rule {rule.register}={rule.code}: unknown IEC 61851 state {rule.iec61851_state!r}")
        if rule.status not in OperatorStatus.values:
            problems.append(f"status rule {rule.register}={rule.code}: unknown status {rule.status!r}")
    for (register, code), count in Counter((r.register, r.code) for r in spec.status_rules).items():
        if count > 1:
            problems.append(f"status code {register}={code} is mapped {count} times")
    return problems


def profile_problems(spec: ProfileSpec) -> list[str]:
    """Everything wrong with a profile, as sentences; empty when it is consistent."""
    problems = [
        f"register {reg.name!r}: {message}" for reg in spec.registers for message in register_problems(reg).values()
    ]
    for name, count in Counter(reg.name for reg in spec.registers).items():
        if count > 1:
            problems.append(f"register name {name!r} is used {count} times")
    for role, count in Counter(reg.role for reg in spec.registers if reg.role).items():
        if count > 1:
            problems.append(f"role {role!r} is given to {count} registers")
    problems += [
        f"registers {a.name!r} ({a.address}..{a.address + a.count - 1}) and {b.name!r} "
        f"({b.address}..{b.address + b.count - 1}) overlap"
        for a, b in overlapping(list(spec.registers))
    ]
    problems += status_rule_problems(spec)
    by_name = {reg.name: reg for reg in spec.registers}
    for hb in spec.heartbeats:
        target = by_name.get(hb.register)
        if target is None or not target.writable:
            problems.append(f"heartbeat register {hb.register!r} is not a writable register of this profile")
        if hb.value_from is not None and hb.value_from not in by_name:
            problems.append(f"heartbeat value_from {hb.value_from!r} is not a register of this profile")
        if (hb.value is None) == (hb.value_from is None):
            problems.append(f"heartbeat {hb.register!r} needs either value or value_from")
        if hb.interval_s <= 0:
            problems.append(f"heartbeat {hb.register!r} needs a positive interval_s")
    for block in spec.read_blocks:
        limit = 2000 if block.function in BIT_FUNCTIONS else 125
        if block.function not in Function.values or not 1 <= block.count <= limit:
            problems.append(f"read block {block.function} {block.address}+{block.count} is not a valid read")
    if set(spec.derived) - set(DERIVABLE_ROLES):
        problems.append(f"only {', '.join(DERIVABLE_ROLES)} can be derived")
    if spec.fixed_read_size:
        too_big = [reg.name for reg in spec.registers if reg.readable and reg.count > spec.fixed_read_size]
        if too_big:
            problems.append(f"registers {', '.join(too_big)} do not fit the fixed read size {spec.fixed_read_size}")
    return problems
