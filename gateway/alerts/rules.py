"""The alert rules as the engine evaluates them: pure, no I/O, cheap per record.

Each record-driven rule judges a record with one of four verdicts:
- ON: the condition holds (it raises once it has held for the rule's hold_s);
- BETWEEN: it no longer holds, but the value has not gone back past the hysteresis: a pending
  condition starts over, an open alert stays open (so flapping around a threshold raises once);
- OFF: back past the hysteresis: an open alert clears;
- None: the record says nothing about it (the value is missing: a charger offline, a profile
  without a temperature), so nothing changes.
Stale and command failed are not judged per record: the engine's clock evaluates them.
"""

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.choices import AlertKind, Comparator, OperatorStatus
from gateway.models import AlertRule
from gateway.telemetry import Record

ON, BETWEEN, OFF = 1, 0, -1
Verdict = int | None

FAULTED = OperatorStatus.FAULTED.value
OFFLINE = OperatorStatus.OFFLINE.value
# Kinds evaluated record by record (the others by the clock).
RECORD_KINDS = frozenset({AlertKind.FAULTED, AlertKind.OFFLINE, AlertKind.TEMPERATURE, AlertKind.THRESHOLD})
COMPARE: dict[str, Callable[[float, float], bool]] = {
    Comparator.GT: operator.gt,
    Comparator.GE: operator.ge,
    Comparator.LT: operator.lt,
    Comparator.LE: operator.le,
}
TEMPERATURE_VALUE = "temperature_c"
TEMPERATURE_COMPARATOR = Comparator.GE


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """One enabled AlertRule, ready to judge records: what the engine keeps of it between reloads."""

    id: int
    name: str
    kind: str
    severity: str
    hold_s: float
    site: str | None  # scope: a site's slug, or a charge point's, or neither (the whole fleet)
    charge_point: str | None
    notify_emails: tuple[str, ...]
    webhook_url: str
    judge: Callable[[Record], Verdict] | None  # None: not judged per record (stale, command failed)
    value: str = ""
    comparator: str = ""
    threshold: float | None = None

    def applies_to(self, charge_point: str, site: str) -> bool:
        if self.charge_point is not None:
            return self.charge_point == charge_point
        return self.site is None or self.site == site

    @property
    def notifies(self) -> bool:
        return bool(self.notify_emails or self.webhook_url)

    def describe(self, record: Record | None, value: float | None) -> str:
        """The alert's message when it is raised from a record (or by the clock with record None)."""
        if self.kind == AlertKind.FAULTED:
            return "The charger reports a fault" + ("" if value is None else f" (error code {value:g})") + "."
        if self.kind == AlertKind.OFFLINE:
            return f"The charge point has been offline for {self.hold_s:g} s or more."
        if self.judge is not None and value is not None:
            return f"{self.value} is {value:g} ({self.comparator} {self.threshold:g} for {self.hold_s:g} s)."
        return self.name


def compile_rule(rule: AlertRule, site: str | None, charge_point: str | None) -> CompiledRule | None:
    """The rule as the engine evaluates it; None for a threshold rule that clean() would refuse."""
    value, comparator, threshold = rule.value, rule.comparator, rule.threshold
    if rule.kind == AlertKind.TEMPERATURE:
        value, comparator = TEMPERATURE_VALUE, TEMPERATURE_COMPARATOR
    judge: Callable[[Record], Verdict] | None
    if rule.kind == AlertKind.FAULTED:
        judge = judge_faulted
    elif rule.kind == AlertKind.OFFLINE:
        judge = judge_offline
    elif rule.kind in (AlertKind.TEMPERATURE, AlertKind.THRESHOLD):
        if not value or comparator not in COMPARE or threshold is None:
            return None
        judge = threshold_judge(value, comparator, threshold, rule.hysteresis)
    else:
        judge = None
    return CompiledRule(
        id=rule.id,
        name=rule.name,
        kind=rule.kind,
        severity=rule.severity,
        hold_s=max(rule.hold_s, 0.0),
        site=site,
        charge_point=charge_point,
        notify_emails=parse_emails(rule.notify_emails),
        webhook_url=rule.webhook_url,
        judge=judge,
        value=value,
        comparator=comparator,
        threshold=threshold,
    )


def judge_faulted(record: Record) -> Verdict:
    """Faulted until the charger reports another status; an offline record says nothing about the fault."""
    status = record["status"]
    if status == FAULTED:
        return ON
    return None if status == OFFLINE else OFF


def judge_offline(record: Record) -> Verdict:
    return ON if record["status"] == OFFLINE else OFF


def threshold_judge(value: str, comparator: str, threshold: float, hysteresis: float) -> Callable[[Record], Verdict]:
    """`value comparator threshold`; it clears once the value is back past the threshold by at least
    hysteresis (with none, as soon as the condition no longer holds)."""
    holds = COMPARE[comparator]
    hysteresis = max(hysteresis, 0.0)
    if comparator in (Comparator.GT, Comparator.GE):
        clear_below = threshold - hysteresis

        def judge(record: Record) -> Verdict:
            current = record["values"].get(value)
            if current is None:
                return None
            if holds(current, threshold):
                return ON
            return OFF if current <= clear_below else BETWEEN

    else:
        clear_above = threshold + hysteresis

        def judge(record: Record) -> Verdict:
            current = record["values"].get(value)
            if current is None:
                return None
            if holds(current, threshold):
                return ON
            return OFF if current >= clear_above else BETWEEN

    return judge


def rule_value(rule: CompiledRule, record: Record) -> float | None:
    """The value an alert keeps: the watched value, or a faulted charger's error code."""
    values: dict[str, Any] = record.get("values") or {}
    if rule.kind == AlertKind.FAULTED:
        return values.get("error_code")
    return values.get(rule.value) if rule.value else None


def parse_emails(text: str) -> tuple[str, ...]:
    """notify_emails: one address per line or comma-separated."""
    return tuple(address.strip() for address in text.replace(",", "\n").splitlines() if address.strip())
