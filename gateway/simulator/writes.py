"""What a write does to a simulated charger, read from its profile's commands (pure, no I/O).

- A write to the set_current_limit command's register (or to a writable current_limit_a register)
  sets the current limit; a profile that pauses with 0 A (ABB, Alfen, Vestel...) pauses with it.
- A write of the pause command's `value` to its register pauses charging, one of the resume
  command's `value` resumes it at the limit set before (KEBA enable_charging_station 0 / 1,
  Schneider set_command 7 / 8, Mennekes change_charge_state 1 / 2); other values of that register
  change nothing here. The `enable_register` simulator hint does the same for 0 / anything else.
- A register the limit command verifies reads the limit set (ABB's 4022h "set by Modbus"), unless
  it reads the limit in force (a current_limit_a register) or a status.
- A register a pause or resume verifies reads what the charger shows once it has done it: most
  follow by themselves (the limit, the written value, the status codes); one the model has no
  value for (Webasto's charge_state, Mennekes' amtron_state 4 "paused") shows an expected value,
  one that keeps the status the other registers show (KEBA: 5 "interrupted", not 1 "not ready").
"""

import math
from dataclasses import dataclass, field

from gateway.choices import CommandAction, Role
from gateway.profiles.codec import Value
from gateway.profiles.spec import CommandSpec, ProfileSpec
from gateway.simulator.encoding import SimulatorHints


@dataclass(frozen=True)
class Shows:
    """A register that reads one of `values` (within `tolerance`) while a command's effect holds."""

    register: str
    values: tuple[float, ...]
    tolerance: float = 0.0

    def matches(self, value: Value) -> bool:
        """Whether the value served already is one the command expects."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return isinstance(value, bool) and float(value) in self.values
        return any(abs(value - expected) <= self.tolerance for expected in self.values)

    @property
    def candidates(self) -> tuple[float | int, ...]:
        """The values to serve instead, in the profile's order (whole numbers as integers)."""
        return tuple(int(value) if float(value).is_integer() else value for value in self.values)


@dataclass(frozen=True)
class WriteEffects:
    """Which writes set the limit, which pause or resume, and what the verified registers show."""

    limit_registers: frozenset[str] = frozenset()
    setpoint_registers: frozenset[str] = frozenset()  # read the limit set: readable limit and verified registers
    # register → written value → whether charging is enabled afterwards
    switches: dict[str, dict[float, bool]] = field(default_factory=dict)
    enable_register: str | None = None  # the simulator hint: 0 disables, anything else enables
    paused_shows: Shows | None = None
    resumed_shows: Shows | None = None

    @classmethod
    def from_profile(cls, profile: ProfileSpec, hints: SimulatorHints) -> "WriteEffects":
        """The effects declared by the profile's commands (and registers, and simulator hints)."""
        limit_command = _supported(profile.command(CommandAction.SET_CURRENT_LIMIT))
        limits = {
            register.name
            for register in profile.registers
            if register.writable and register.role == Role.CURRENT_LIMIT_A
        }
        if limit_command is not None:
            limits.add(limit_command.register)
        switches: dict[str, dict[float, bool]] = {}
        shows: dict[str, Shows | None] = {}
        for action, enabled in ((CommandAction.PAUSE, False), (CommandAction.RESUME, True)):
            command = _supported(profile.command(action))
            if command is None:
                continue
            if command.register not in limits and command.value is not None:
                switches.setdefault(command.register, {})[float(command.value)] = enabled
            shows[action] = _shows(profile, command)
        setpoints = set(limits)
        if limit_command is not None and limit_command.verify_register:
            setpoints.add(limit_command.verify_register)
        readable = {register.name for register in profile.registers if register.readable}
        return cls(
            limit_registers=frozenset(limits),
            setpoint_registers=frozenset(setpoints & readable),
            switches=switches,
            enable_register=hints.enable_register,
            paused_shows=shows.get(CommandAction.PAUSE),
            resumed_shows=shows.get(CommandAction.RESUME),
        )

    def switch(self, register: str, value: Value) -> bool | None:
        """Whether charging is enabled after this write, or None if the write switches nothing."""
        values = self.switches.get(register)
        if values is not None:
            return values.get(float(value)) if isinstance(value, int | float) else None
        if register == self.enable_register:
            return bool(value)
        return None


def _supported(command: CommandSpec | None) -> CommandSpec | None:
    return command if command is not None and command.supported else None


def _shows(profile: ProfileSpec, command: CommandSpec) -> Shows | None:
    """What the command's verify register reads once the charger did it, if the profile says."""
    name = command.verify_register or command.register
    try:
        register = profile.register(name)
    except KeyError:
        return None
    if not register.readable:
        return None
    if command.verify_values:
        values = command.verify_values
    elif command.verify_value is not None:
        values = (command.verify_value,)
    elif command.value is not None and name == command.register:
        values = (command.value,)
    else:
        return None  # the value written (a limit): it follows by itself
    values = tuple(float(value) for value in values if math.isfinite(value))
    return Shows(name, values, command.tolerance) if values else None
