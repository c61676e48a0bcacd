"""Consistency rules of a profile: shared by the admin, `profiles import` and the shipped files."""

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gateway.choices import (
    DERIVABLE_ROLES,
    VALUE_UNITS,
    Access,
    ByteOrder,
    CommandAction,
    DataType,
    Function,
    Iec61851State,
    OperatorStatus,
    PollGroup,
    Role,
    StatusMatch,
    StringEncoding,
)
from gateway.modbus.pacing import pacing_problems
from gateway.modbus.planner import MAX_READ_BITS, MAX_READ_REGISTERS
from gateway.profiles.codec import FIXED_LENGTHS, INTEGER_RANGES
from gateway.profiles.encode import WriteRangeError, allowed_writes, encode_checked_write
from gateway.profiles.spec import (
    CommandSpec,
    Heartbeat,
    ProfileFormatError,
    ProfileSpec,
    ReadBlock,
    RegisterSpec,
    derived_from_json,
    entries_from_json,
)

BIT_FUNCTIONS = (Function.COIL, Function.DISCRETE_INPUT)
MAX_ADDRESS = 65535
MAX_UNIT_ID = 255
MAX_HEARTBEAT_INTERVAL_S = 3600  # watchdogs time out in seconds or minutes; more is a typo
MAX_SETTLE_S = 60  # chargers apply a write in seconds; a minute is a typo (ms for s), and commands expire in 30 s
_CHOICES = {
    "function": Function,
    "data_type": DataType,
    "byte_order": ByteOrder,
    "encoding": StringEncoding,
    "access": Access,
    "poll_group": PollGroup,
}


# A site meter's profile: what the site controller needs from it (the three phase currents).
METER_ROLES: tuple[str, ...] = (Role.CURRENT_L1_A, Role.CURRENT_L2_A, Role.CURRENT_L3_A)


def is_meter_profile(spec: ProfileSpec) -> bool:
    """A site meter's profile, not a charger's: the rule that selects Site.meter_profile choices.

    A meter has no status (no status rules), takes no commands and needs no watchdog (no
    heartbeats), and measures the three phase currents. Every charger profile has status rules,
    so no charger is ever offered as a meter, nor a meter for a charge point
    (gateway.profiles.store.meter_profiles / charger_profiles apply the same rule to the database).
    """
    roles = {register.role for register in spec.registers}
    return not spec.status_rules and not spec.commands and not spec.heartbeats and set(METER_ROLES) <= roles


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
    if not isinstance(reg.write_values, tuple | list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in reg.write_values
    ):
        errors["write_values"] = "Write values must be a list of numbers, e.g. [0] or [0, 1]."
    elif reg.write_values and reg.access == Access.READ:
        errors["access"] = "A read-only register cannot have write values."
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
        if rule.match not in StatusMatch.values:
            problems.append(
                f"status rule {rule.register}={rule.code}: match must be one of {', '.join(StatusMatch.values)}, "
                f"not {rule.match!r}"
            )
    for (register, code, match), count in Counter((r.register, r.code, r.match) for r in spec.status_rules).items():
        if count > 1:
            sign = "!=" if match == StatusMatch.IS_NOT else "="
            problems.append(f"status code {register}{sign}{code} is mapped {count} times")
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
    problems += [problem for hb in spec.heartbeats for problem in heartbeat_problems(hb)]
    problems += heartbeat_register_problems(
        spec.heartbeats, {reg.name for reg in spec.registers}, {reg.name for reg in spec.registers if reg.writable}
    )
    problems += command_list_problems(spec.commands)
    problems += command_register_problems(spec.commands, {reg.name: reg for reg in spec.registers})
    problems += [problem for block in spec.read_blocks for problem in read_block_problems(block)]
    problems += derived_problems(spec.derived)
    problems += pacing_problems(spec)
    if spec.fixed_read_size:
        too_big = [reg.name for reg in spec.registers if reg.readable and reg.count > spec.fixed_read_size]
        if too_big:
            problems.append(f"registers {', '.join(too_big)} do not fit the fixed read size {spec.fixed_read_size}")
    return problems


def read_block_problems(block: ReadBlock) -> list[str]:
    """Why an explicit read block is not a read the protocol allows (empty when it is)."""
    where = f"read block {block.function} {block.address}+{block.count}"
    if block.function not in Function.values:
        return [f"{where}: function must be one of {', '.join(Function.values)}"]
    problems = []
    limit = MAX_READ_BITS if block.function in BIT_FUNCTIONS else MAX_READ_REGISTERS
    if not 1 <= block.count <= limit:
        problems.append(f"{where}: count must be between 1 and {limit}")
    if not 0 <= block.address <= MAX_ADDRESS:
        problems.append(f"{where}: address must be between 0 and {MAX_ADDRESS}")
    elif block.address + block.count > MAX_ADDRESS + 1:
        problems.append(f"{where}: runs past address {MAX_ADDRESS}")
    if block.unit_id is not None and not 0 <= block.unit_id <= MAX_UNIT_ID:
        problems.append(f"{where}: unit_id must be between 0 and {MAX_UNIT_ID}")
    return problems


def heartbeat_problems(hb: Heartbeat) -> list[str]:
    """What is wrong with one heartbeat on its own (the registers it names are checked separately)."""
    problems = []
    if (hb.value is None) == (hb.value_from is None):
        problems.append(f"heartbeat {hb.register!r} needs either value or value_from")
    if not 0 < hb.interval_s <= MAX_HEARTBEAT_INTERVAL_S:
        problems.append(f"heartbeat {hb.register!r}: interval_s must be above 0 and at most {MAX_HEARTBEAT_INTERVAL_S}")
    return problems


def heartbeat_register_problems(heartbeats: Iterable[Heartbeat], names: set[str], writable: set[str]) -> list[str]:
    """Heartbeats must write a writable register of the profile, and copy from one of its registers.

    Takes names rather than a spec so the admin can check the registers of the same form post.
    """
    problems = []
    for hb in heartbeats:
        if hb.register not in writable:
            problems.append(f"heartbeat register {hb.register!r} is not a writable register of this profile")
        if hb.value_from is not None and hb.value_from not in names:
            problems.append(f"heartbeat value_from {hb.value_from!r} is not a register of this profile")
    return problems


def command_problems(command: CommandSpec) -> list[str]:
    """What is wrong with one command on its own (the registers it names are checked separately)."""
    action, where = command.action, f"command {command.action!r}"
    if action not in CommandAction.values:
        return [f"{where}: the action must be one of {', '.join(CommandAction.values)}"]
    problems = []
    if not 0 <= command.settle_s <= MAX_SETTLE_S:
        problems.append(f"{where}: settle_s must be between 0 and {MAX_SETTLE_S} s, not {command.settle_s:g}")
    if command.tolerance < 0:
        problems.append(f"{where}: tolerance must be 0 or more, not {command.tolerance:g}")
    if command.unsupported:
        given = [name for name in _COMMAND_DETAILS if getattr(command, name) not in (None, "", ())]
        if command.register:
            problems.append(f"{where}: give either the register it writes or why it is unsupported, not both")
        elif given:
            problems.append(f"{where}: an unsupported command has no {', '.join(given)}")
        return problems
    if not command.register:
        return [*problems, f"{where}: needs the register it writes, or 'unsupported' saying why there is none"]
    if command.verify_value is not None and command.verify_values:
        problems.append(f"{where}: give verify_value or verify_values, not both")
    if action in VALUE_UNITS:
        if command.value is not None:
            problems.append(f"{where}: value must be null (the command carries its value)")
        if command.min_value is None or command.max_value is None:
            problems.append(
                f"{where}: needs min_value and max_value, the range in {VALUE_UNITS[action]} a command may ask for"
            )
        elif command.min_value > command.max_value:
            problems.append(f"{where}: min_value {command.min_value:g} is above max_value {command.max_value:g}")
        return problems
    if command.min_value is not None or command.max_value is not None:
        problems.append(f"{where}: only the actions that carry a value ({', '.join(VALUE_UNITS)}) have a range")
    if action == CommandAction.PAUSE and command.value is None:
        problems.append(f"{where}: needs the value to write (e.g. 0 for 0 A, or the vendor's disable code)")
    return problems


# What only a supported command has; an unsupported one says why and cites its source.
_COMMAND_DETAILS = ("value", "min_value", "max_value", "verify_register", "verify_value", "verify_values")


def command_list_problems(commands: Iterable[CommandSpec]) -> list[str]:
    """Each command on its own, each action at most once, and a resume of the held limit has a limit to hold."""
    commands = list(commands)
    problems = [problem for command in commands for problem in command_problems(command)]
    for action, count in Counter(command.action for command in commands).items():
        if count > 1:
            problems.append(f"command {action!r} is declared {count} times")
    limit = next((c for c in commands if c.action == CommandAction.SET_CURRENT_LIMIT and c.supported), None)
    for command in commands:
        if command.action != CommandAction.RESUME or not command.supported or command.value is not None:
            continue
        # value null = the held limit, else the limit command's max_value (CommandSpec): same register.
        if limit is None:
            problems.append(
                "command 'resume': value null writes the held limit, so the profile needs a supported set_current_limit"
            )
        elif command.register != limit.register:
            problems.append(
                f"command 'resume': value null writes the held limit, so it must write the set_current_limit "
                f"register {limit.register!r}, not {command.register!r}"
            )
    return problems


def command_register_problems(commands: Iterable[CommandSpec], registers: dict[str, RegisterSpec]) -> list[str]:
    """Commands must write a writable register within its write range and read back a readable one.

    Takes the registers by name rather than a spec so the admin can check the registers of the same
    form post.
    """
    problems = []
    for command in commands:
        if not command.supported or command.action not in CommandAction.values:
            continue
        where = f"command {command.action!r}"
        target = registers.get(command.register)
        if target is None:
            problems.append(f"{where}: register {command.register!r} is not a register of this profile")
            continue
        if not target.writable:
            problems.append(f"{where}: register {command.register!r} is read-only")
            continue
        verify = registers.get(command.verify_register or command.register)
        if verify is None:
            problems.append(f"{where}: verify_register {command.verify_register!r} is not a register of this profile")
        elif not verify.readable:
            problems.append(
                f"{where}: register {verify.name!r} is write-only, so it cannot be read back: "
                "name a readable verify_register that reflects the write"
            )
        elif command.verify_value is None and not command.verify_values and verify.unit != target.unit:
            problems.append(
                f"{where}: the read-back of {verify.name!r} ({verify.unit or 'no unit'}) is compared with the value "
                f"written to {target.name!r} ({target.unit or 'no unit'}): give verify_value(s) or a register in "
                "the same unit"
            )
        if command.action in VALUE_UNITS:
            problems += _range_problems(command, target)
        elif command.value is not None:
            try:
                encode_checked_write(target, command.value)
            except WriteRangeError as exc:
                problems.append(f"{where}: value {command.value:g} cannot be written: {exc}")
    return problems


def _range_problems(command: CommandSpec, target: RegisterSpec) -> list[str]:
    """A value-bearing command writes its unit (VALUE_UNITS), and its range is one the register takes.

    set_current_limit: every value of its range (the operator's control offers each). The failsafe
    commands: both ends; a value between them that the register refuses (1..5 A on "0 or 6..32 A")
    is refused when it is sent, by the register's write range (check_write_range).
    """
    where, unit = f"command {command.action!r}", VALUE_UNITS[command.action]
    if target.unit and target.unit != unit:  # no unit: a hand-made map that says nothing, not a wrong one
        return [f"{where}: register {target.name!r} holds {target.unit}, not {unit}"]
    if command.min_value is None or command.max_value is None:
        return []  # command_problems says so
    problems = []
    for name in ("min_value", "max_value"):
        try:
            encode_checked_write(target, getattr(command, name))
        except WriteRangeError as exc:
            problems.append(f"{where}: {name} {getattr(command, name):g} cannot be written: {exc}")
    if command.action != CommandAction.SET_CURRENT_LIMIT:
        return problems
    # Both ends passing is not enough: 0..32 passes "0 or 6..32 A" at each end, not in between.
    bounded = target.write_min is not None or target.write_max is not None
    inside = (
        (target.write_min is None or command.min_value >= target.write_min)
        and (target.write_max is None or command.max_value <= target.write_max)
        and (bounded or not target.write_values)
    )
    if not problems and not inside:
        problems.append(
            f"{where}: the range {command.min_value:g}..{command.max_value:g} {unit} is not inside what "
            f"{target.name!r} takes ({allowed_writes(target)})"
        )
    return problems


def derived_problems(derived: Iterable[str]) -> list[str]:
    """The roles a profile computes from others must be derivable, each once."""
    derived = list(derived)
    problems = []
    unknown = sorted(set(derived) - set(DERIVABLE_ROLES))
    if unknown:
        problems.append(f"only {', '.join(DERIVABLE_ROLES)} can be derived, not {', '.join(map(repr, unknown))}")
    if len(set(derived)) != len(derived):
        problems.append("a role is derived more than once")
    return problems


def json_field_problems(read_blocks: Any, heartbeats: Any, derived: Any, commands: Any = None) -> dict[str, str]:
    """Problems of a profile's JSON fields as the admin form holds them, by field name.

    The same shape checks (spec.py) and rules (above) as a profile import, so the form refuses
    whatever the poller could not use: unknown keys, wrong types, out-of-range reads, unknown roles.
    """
    errors: dict[str, str] = {}
    try:
        blocks = entries_from_json(ReadBlock, read_blocks, "read_blocks")
        problems = [problem for block in blocks for problem in read_block_problems(block)]
    except ProfileFormatError as exc:
        problems = [str(exc)]
    if problems:
        errors["read_blocks"] = "; ".join(problems) + "."
    try:
        problems = [
            problem
            for hb in entries_from_json(Heartbeat, heartbeats, "heartbeats")
            for problem in heartbeat_problems(hb)
        ]
    except ProfileFormatError as exc:
        problems = [str(exc)]
    if problems:
        errors["heartbeats"] = "; ".join(problems) + "."
    try:
        problems = derived_problems(derived_from_json(derived))
    except ProfileFormatError as exc:
        problems = [str(exc)]
    if problems:
        errors["derived"] = "; ".join(problems) + "."
    try:
        problems = command_list_problems(
            entries_from_json(CommandSpec, [] if commands is None else commands, "commands")
        )
    except ProfileFormatError as exc:
        problems = [str(exc)]
    if problems:
        errors["commands"] = "; ".join(problems) + "."
    return errors
