"""Which codes a simulated charger serves in its status registers, found with the client's own decoder.

A profile's status rules map register codes to (operator status, IEC 61851 state), first match
wins, and may combine several registers (KEBA: error state and error code, then cable state, then
charging state); a rule matches as the poller's decode.rule_matches says ("is" or "is_not" a code). Going the other
way, the simulator tries every combination of candidate codes (the rules' codes, the registers'
enum codes and one code no rule uses), encodes each as the charger would, decodes it as the
poller would, and keeps for each (status, state) the combination that resolve_status maps to it,
preferring codes whose own rules agree with it and codes the profile documents. Done once per
profile (the fleet shares it between charge points).
"""

import itertools
import logging

from gateway.choices import DataType, Iec61851State
from gateway.profiles.codec import DecodeError, Value
from gateway.profiles.decode import decode_register, resolve_status, rule_matches, status_code_text
from gateway.profiles.spec import ProfileSpec, RegisterSpec
from gateway.simulator.encoding import TEXT_TYPES, SimulatorHints, code_value, encode_register

logger = logging.getLogger(__name__)

StatusPair = tuple[str, str]  # (operator status, IEC 61851 state)
MAX_COMBINATIONS = 100_000  # far above any shipped profile (at most a few hundred)
# A code neither a rule nor the enum names is used only when every documented one contradicts more.
UNDOCUMENTED_CODE_COST = 2


class StatusCodes:
    """Status register values per (status, IEC state) a profile can express; precomputed."""

    def __init__(self, profile: ProfileSpec, hints: SimulatorHints) -> None:
        self.profile = profile
        self._hints = hints
        registers = [profile.register(name) for name in profile.status_registers]
        self._documented: dict[str, set[str | None]] = {}  # codes a rule or the enum names, per register
        candidates = [self._candidates(register) for register in registers]
        self._codes: dict[StatusPair, dict[str, Value]] = {}
        scores: dict[StatusPair, tuple[int, int]] = {}
        for count, combination in enumerate(itertools.product(*candidates)):
            if count >= MAX_COMBINATIONS:
                logger.warning("profile %s: status code search stopped after %s combinations", profile.slug, count)
                break
            decoded = {register.name: seen for register, (_, seen) in zip(registers, combination, strict=True)}
            status, iec_state, problem = resolve_status(profile, decoded)
            if problem or iec_state is None:
                continue
            pair = (status, iec_state)
            score = self._agreement(pair, decoded)
            if pair not in self._codes or score > scores[pair]:
                self._codes[pair] = {
                    register.name: value for register, (value, _) in zip(registers, combination, strict=True)
                }
                scores[pair] = score
        # Rule order: the first rule of a status is its usual form (e.g. charging → C before D).
        self.pairs: tuple[StatusPair, ...] = tuple(
            dict.fromkeys(
                (rule.status, rule.iec61851_state)
                for rule in profile.status_rules
                if (rule.status, rule.iec61851_state) in self._codes
            )
        )
        self._chosen: dict[tuple[str, str | None], tuple[StatusPair, dict[str, Value]]] = {}

    def can_report(self, status: str, iec_state: str | None = None) -> bool:
        """Whether the profile's rules can produce this status (with this IEC state, if given)."""
        return any(pair[0] == status and iec_state in (None, pair[1]) for pair in self.pairs)

    def values_for(self, status: str, iec_state: str | None) -> tuple[StatusPair, dict[str, Value]]:
        """The pair served for a wanted status and the status registers' values that produce it.

        The exact pair if the profile has it; else the first pair (in rule order) with the same
        status; else the same IEC state; else the profile's first pair.
        """
        key = (status, iec_state)
        if key not in self._chosen:
            self._chosen[key] = self._choose(status, iec_state)
        return self._chosen[key]

    def _choose(self, status: str, iec_state: str | None) -> tuple[StatusPair, dict[str, Value]]:
        pairs = self.pairs
        for matches in (
            lambda pair: pair == (status, iec_state),
            lambda pair: pair[0] == status,
            lambda pair: pair[1] == iec_state,
            lambda pair: True,
        ):
            for pair in pairs:
                if matches(pair):
                    return pair, self._codes[pair]
        return (status, iec_state or Iec61851State.A.value), {}  # a profile without status rules

    def _candidates(self, register: RegisterSpec) -> list[tuple[Value, Value]]:
        """(value to serve, value a client decodes) for each distinct code the register can show."""
        wanted: list[Value] = [
            code_value(register, rule.code) for rule in self.profile.status_rules if rule.register == register.name
        ]
        wanted += [code_value(register, key) for key in register.enum]
        wanted += [False, True] if register.data_type in (DataType.BOOL, DataType.BIT) else []
        found: dict[str | None, tuple[Value, Value]] = {}
        for value in wanted:
            if value is None:
                continue
            decoded = self._round_trip(register, value)
            found.setdefault(status_code_text(decoded), (value, decoded))
        self._documented[register.name] = set(found)
        neutral = self._neutral(register, set(found))
        if neutral is not None:
            found.setdefault(status_code_text(neutral[1]), neutral)
        return list(found.values())

    def _neutral(self, register: RegisterSpec, used: set[str | None]) -> tuple[Value, Value] | None:
        """A code no rule and no enum uses, so that a combination can step past every rule
        (and the value an "is_not" rule matches when the enum lists no other code)."""
        options: list[Value] = [""] if register.data_type in TEXT_TYPES else list(range(len(used) + 2))
        for value in options:
            decoded = self._round_trip(register, value)
            if status_code_text(decoded) not in used:
                return value, decoded
        return None

    def _round_trip(self, register: RegisterSpec, value: Value) -> Value:
        try:
            return decode_register(register, encode_register(register, value, self._hints))
        except (DecodeError, ValueError, TypeError):
            return None

    def _agreement(self, pair: StatusPair, decoded: dict[str, Value]) -> tuple[int, int]:
        """How well each register's own rule agrees with the pair, then how little the others contradict it.

        So a KEBA without a vehicle shows a charging state of 'not ready' (B) rather than
        'charging' (C), and a charging ABB a locked cable rather than an undocumented lock code.
        """
        agreement = contradiction = 0
        for name, documented in self._documented.items():
            if status_code_text(decoded.get(name)) not in documented:
                contradiction += UNDOCUMENTED_CODE_COST
        for rule in self.profile.status_rules:
            if not rule_matches(rule, decoded):
                continue
            if (rule.status, rule.iec61851_state) == pair:
                agreement += 3
            elif rule.status == pair[0]:
                agreement += 2
            elif rule.iec61851_state == pair[1]:
                agreement += 1
            else:
                contradiction += _iec_distance(rule.iec61851_state, pair[1])
        return agreement, -contradiction


def _iec_distance(first: str, second: str) -> int:
    """How far apart two pilot states are: A-B-C-D in a row, E and F far from everything."""
    order = "ABCD"
    if first in order and second in order:
        return abs(order.index(first) - order.index(second))
    return len(order)


def iec_state_code(register: RegisterSpec, iec_state: str) -> Value:
    """What an IEC 61851 state register outside the status rules shows for a state."""
    if register.data_type in TEXT_TYPES:
        return iec_state
    for key, meaning in register.enum.items():
        if str(meaning).strip().upper().startswith(iec_state):
            return code_value(register, key)
    return Iec61851State.values.index(iec_state)
