"""One site's controller in the poller that owns it: every control period (and at once when the
meter shows a phase above the limit) it measures the site, shares the limit (allocate()) and sends
the chargers their new limits through the command path, then publishes a SiteStatus.

Safety rules an operator relies on:
- It never writes Modbus itself: commands go to CommandRunner.deliver() (journal, range checks,
  a verified write between two polls on the charger's own connection, the result audited).
- Within a round, decreases and pauses go out first; increases only once every decrease of the
  round was verified (a failed decrease holds the increases back to the next period).
- A charger that ignored a write (read-back mismatch) is unresponsive for UNRESPONSIVE_S: counted
  at its actual draw. One that sends no fresh record is offline: counted at its failsafe current.
- Without a fresh meter reading (meter_stale_s) every charger gets its failsafe share.
- Each charger whose profile has them gets its failsafe current and timeout on start, when it
  comes back online and when the site's configuration changes.
- A round that fails is logged and said in the status; the loop goes on (the poller never stops
  for it).
"""

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.choices import CommandAction, CommandStatus, FailureReason, OperatorStatus, Wiring
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.runtime import StopWatch
from gateway.sitecontrol import allocate as allocation
from gateway.sitecontrol import failsafe
from gateway.sitecontrol.allocate import ChargerInput, ControlMemory, Decision, SiteInput
from gateway.sitecontrol.config import ChargerConfig, SiteControlConfig
from gateway.sitecontrol.demand import DEMAND_SETTLE_S, DemandTracker
from gateway.sitecontrol.messages import ChargerShare, SiteStatus
from gateway.sitecontrol.meter import MeterReader
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

Phases = tuple[float, float, float]
Clock = Callable[[], float]
Deliver = Callable[[CommandMessage], None]
PublishStatus = Callable[[SiteStatus], None]

UNRESPONSIVE_S = 60.0  # a read-back mismatch counts the charger at its actual draw this long
RECORD_FRESH_PERIODS = 3  # a record older than this many periods (and RECORD_FRESH_MIN_S) means offline
RECORD_FRESH_MIN_S = 10.0
URGENT_MIN_GAP_S = 1.0  # an over-limit meter reading starts a round at once, at most this often
EXPIRY_PERIODS = 2  # a controller command expires this many periods after it was sent,
EXPIRY_MIN_S = 30.0  # and not sooner than this: a paced charger's queue (KEBA: ~10 s a write) must not outlast it
PENDING_GRACE_S = 30.0  # a command with no result this long after its expiry is forgotten
# A vehicle is connected and takes (or waits for) current. "suspended" is also the state of a
# charger the controller paused: it still wants current.
WANTS_CURRENT = frozenset({OperatorStatus.CHARGING, OperatorStatus.SUSPENDED, OperatorStatus.PREPARING})
PHASE_DRAWN_A = 1.0  # a phase carrying more than this is one the car draws on (narrows a 1-phase car)
# A limit read back (values.current_limit_a) this far from the one the controller verified, in this
# many consecutive records with no command on its way, changed by itself (a lapsed watchdog's
# failsafe current, a reboot, a local app): the controller forgets it and writes it again.
DRIFT_TOLERANCE_A = 0.5
DRIFT_RECORDS = 2
DECREASE, INCREASE, FAILSAFE = "decrease", "increase", "failsafe"
# The base load is the meter less the chargers' own currents, but the meter sees a car change
# before the car's record does (a record is up to a poll interval old, a car takes up to 5 s to
# follow a new limit: IEC 61851-1): right after a limit change or a car starting, a ramp looks like
# the building rising, a cut like it falling. So the base is taken only from a meter reading at
# least BASE_SETTLE_S after the controller's last limit change whose base is within
# BASE_STABLE_A of the reading before. Periodic rounds share against the base taken so (the
# configured base load until there is one); an urgent round (a phase over the limit) takes the
# larger of that and the latest reading, and keeps it, so a real rise is never missed.
BASE_SETTLE_S = 5.0
BASE_STABLE_A = 1.5
START_WAIT_PERIODS = 2  # the first round waits at most this long for every charger's record and a settled base
LIMIT_ACTIONS = frozenset({CommandAction.SET_CURRENT_LIMIT, CommandAction.PAUSE, CommandAction.RESUME})


@dataclass
class Pending:
    """A command this controller sent and awaits the result of."""

    command: CommandMessage
    kind: str  # DECREASE, INCREASE or FAILSAFE
    round: int


@dataclass
class ControllerCounters:
    """What the bench and the metrics read (ints and floats, safe to read from another thread)."""

    periods: int = 0  # rounds run (periodic and urgent)
    urgent: int = 0  # rounds started by an over-limit meter reading
    errors: int = 0  # rounds that raised
    failed_in_a_row: int = 0  # rounds that raised since the last one that went through
    last_period_s: float = 0.0  # how long the last round's work took (measure, allocate, send)

    def __post_init__(self) -> None:
        self.commands: Counter[str] = Counter()  # sent, by action
        self.results: Counter[tuple[str, str]] = Counter()  # (action, status or reason code)


def rotate(record: Record, wiring: str) -> Phases:
    """The charger's measured currents on the site's phases (a single-phase charger's on its one)."""
    values = record.get("values") or {}
    own = [float(values.get(role) or 0.0) for role in ("current_l1_a", "current_l2_a", "current_l3_a")]
    if wiring == Wiring.THREE_PHASE:
        return (own[0], own[1], own[2])
    total = sum(own)
    return tuple(total if wiring == phase else 0.0 for phase in (Wiring.L1, Wiring.L2, Wiring.L3))  # type: ignore[return-value]


def failsafe_shares(config: SiteControlConfig) -> tuple[dict[str, float], str | None]:
    """Each charger's failsafe current (failsafe.plan_failsafe, the documented arithmetic) and
    why a configured current was not used, if it was not."""
    chargers = [
        failsafe.FailsafeCharger(
            c.slug,
            c.phases,
            c.min_a,
            c.priority,
            c.max_a,
            can_pause_on_failsafe=c.can_pause_on_failsafe,
            failsafe_min_a=c.failsafe_min_a,
        )
        for c in config.chargers
    ]
    plan = failsafe.plan_failsafe(
        config.limit_a, config.margin_a, config.base_load_a, chargers, config.failsafe_current_a
    )
    return dict(plan.shares_a), plan.warning


class SiteController:
    """Controls one site. `deliver` takes a command (CommandRunner.deliver), `publish_status` a
    SiteStatus (the poller's outbox); on_record and on_result are fed by the SiteControl.

    Counters (self.counters): periods, urgent, errors, last_period_s, commands by action, results.
    """

    def __init__(
        self,
        config: SiteControlConfig,
        deliver: Deliver,
        publish_status: PublishStatus,
        clock: Clock = time.monotonic,
        *,
        poller_id: str = "",
        meter_factory: Callable[..., MeterReader] = MeterReader,
    ) -> None:
        self.config = config
        self.deliver = deliver
        self.publish_status = publish_status
        self.clock = clock
        self.poller_id = poller_id
        self.meter_factory = meter_factory
        self.counters = ControllerCounters()
        self.memory = ControlMemory()
        self.state = "starting"
        self.reason: str | None = None
        self.records: dict[str, tuple[Record, float]] = {}
        self.limit_a: dict[str, float] = {}  # verified limit held by each charger
        self.paused: dict[str, bool] = {}  # verified pause state (absent: unknown)
        self.pending: dict[str, Pending] = {}
        self.unresponsive_until: dict[str, float] = {}
        self.failsafe_done: dict[str, dict[str, float]] = {}  # slug -> action -> verified value
        self.failsafe_refused: set[tuple[str, str]] = set()  # (slug, action) the charger refused
        self.last_status: SiteStatus | None = None
        self._round = 0
        self._held_increases: tuple[int, list[Pending]] | None = None  # (round, increases) waiting
        self._last_round_at: float | None = None
        self._urgent = False
        self._sleeper: StopWatch | None = None
        self._shares: tuple[dict[str, float], str | None] | None = None
        self._told_no_failsafe: set[str] = set()
        self._drift_records: dict[str, int] = {}  # slug -> consecutive records reading another limit
        self._drift_told: dict[str, tuple[float, float]] = {}  # slug -> (believed, read) last warned about
        self.meter: MeterReader | None = None
        self._settled_base: Phases | None = None  # the base load last measured with nothing changing
        self._last_base: Phases | None = None  # the base of the meter's previous reading
        self._limits_changed_at = -math.inf  # when a limit, pause or resume was last sent or applied
        self._charger_changed_at: dict[str, float] = {}  # slug -> when its limit, pause or resume was last applied
        self.demand = DemandTracker()
        self._meter_task: asyncio.Task | None = None
        self._meter_stop = asyncio.Event()
        self._make_meter()

    # --- inputs ------------------------------------------------------------------------------
    def on_record(self, record: Record) -> None:
        """A charger's telemetry record (the poller's publish): its status and currents."""
        slug = record["charge_point"]
        previous = self.records.get(slug)
        self.records[slug] = (record, self.clock())
        if record["status"] == OperatorStatus.OFFLINE:
            self.failsafe_done.pop(slug, None)  # it may come back rebooted: set its failsafe again
        elif previous is not None and previous[0]["status"] == OperatorStatus.OFFLINE:
            logger.info("%s: %s is back online; its failsafe is set again", self.config.site, slug)
        self._check_drift(slug, record)

    def on_result(self, result: CommandResult) -> None:
        """A command's result (CommandRunner.result_listeners): what the charger now holds."""
        pending = self.pending.pop(result.id, None)
        if pending is None:
            return
        slug, action = result.charge_point, result.action
        self._drift_records.pop(slug, None)  # records before this result may show the old limit
        applied = result.status == CommandStatus.APPLIED
        self.counters.results[(action, result.status if applied else (result.reason_code or "failed"))] += 1
        charger = self._charger(slug)
        if applied and action in LIMIT_ACTIONS:
            self._limits_changed_at = self._charger_changed_at[slug] = self.clock()
        if applied:
            if action == CommandAction.SET_CURRENT_LIMIT:
                self.limit_a[slug] = float(result.value or 0.0)
                if charger is not None and not charger.resume_first:
                    self.paused[slug] = False  # the limit register is the pause register: a limit resumes
            elif action == CommandAction.PAUSE:
                self.paused[slug] = True
            elif action == CommandAction.RESUME:
                self.paused[slug] = False
            elif action in (CommandAction.SET_FAILSAFE_CURRENT, CommandAction.SET_FAILSAFE_TIMEOUT):
                self.failsafe_done.setdefault(slug, {})[action] = float(result.value or 0.0)
        else:
            if pending.kind == DECREASE and self._held_increases is not None:
                # A charger may still draw what it was to give up: nothing rises before the next period.
                self._held_increases = None
                logger.info("%s: a decrease was not verified; increases wait for the next period", self.config.site)
            if result.reason_code == FailureReason.READBACK_MISMATCH:
                self.unresponsive_until[slug] = self.clock() + UNRESPONSIVE_S
                logger.warning(
                    "%s: %s did not take %s (%s); counted at its actual draw for %.0f s",
                    self.config.site,
                    slug,
                    action,
                    result.reason,
                    UNRESPONSIVE_S,
                )
            if action in (CommandAction.SET_FAILSAFE_CURRENT, CommandAction.SET_FAILSAFE_TIMEOUT):
                if result.reason_code in (FailureReason.UNSUPPORTED, FailureReason.OUT_OF_RANGE):
                    self.failsafe_refused.add((slug, action))
                    logger.warning("%s: %s refuses %s: %s", self.config.site, slug, action, result.reason)
            elif action == CommandAction.SET_CURRENT_LIMIT:
                self.limit_a.pop(slug, None)  # it may or may not hold it: sent again next period
            else:
                self.paused.pop(slug, None)
        if self._sleeper is not None:
            self._sleeper.wake()  # held increases may go now

    def _check_drift(self, slug: str, record: Record) -> None:
        """Forget a verified limit the charger no longer holds, so the next round writes it again.

        The controller sends nothing to a charger that holds its allocation; without this, a
        charger whose limit changed by itself while it stayed online (fell back to its failsafe
        current after a lapsed watchdog, rebooted, set from a local app) would keep it for good,
        maybe the vendor's 32 A. Two consecutive records must show it (one may have been read
        between a write and its read-back), with no command of the controller on its way to it.
        """
        believed = self._believed_limit_a(slug)
        read = (record.get("values") or {}).get("current_limit_a")
        if believed is None or read is None or record["status"] == OperatorStatus.OFFLINE:
            self._drift_records.pop(slug, None)
            return
        if abs(float(read) - believed) <= DRIFT_TOLERANCE_A:
            self._drift_records.pop(slug, None)
            self._drift_told.pop(slug, None)  # held again: a later change is warned about again
            return
        if any(p.command.charge_point == slug for p in self.pending.values()):
            self._drift_records.pop(slug, None)
            return
        count = self._drift_records[slug] = self._drift_records.get(slug, 0) + 1
        if count < DRIFT_RECORDS:
            return
        self._drift_records.pop(slug, None)
        read = float(read)
        set_failsafe = self.failsafe_done.get(slug, {}).get(CommandAction.SET_FAILSAFE_CURRENT)
        fell_back = set_failsafe is not None and abs(read - set_failsafe) <= DRIFT_TOLERANCE_A
        again = self._drift_told.get(slug) == (believed, read)
        if again and read < believed:
            # The same lower limit right after it was written again and verified: the charger applies
            # a lower one of its own (ABB's current_limit_a is the least of all its load-management
            # channels). Writing it again does not help and a lower draw is safe: left alone.
            return
        # Once per change: a charger that keeps going back to another limit would otherwise warn every few seconds.
        level = logging.INFO if again else logging.WARNING
        self._drift_told[slug] = (believed, read)
        logger.log(
            level,
            "%s: %s holds %s A, not the %s A the controller set%s; its limit and failsafe set-up are written again",
            self.config.site,
            slug,
            f"{read:g}",
            f"{believed:g}",
            " (its failsafe current: the watchdog lapsed)" if fell_back else "",
        )
        self.limit_a.pop(slug, None)
        self.paused.pop(slug, None)
        # A reboot may also have reset the failsafe registers (ABB's firmware resets the fallback
        # limit): two more verified writes are cheap.
        self.failsafe_done.pop(slug, None)

    def _believed_limit_a(self, slug: str) -> float | None:
        """The limit in force the controller verified for this charger, as current_limit_a reads it;
        None when unknown, or paused through another register (KEBA's enable keeps the setpoint)."""
        charger = self._charger(slug)
        if charger is None:
            return None
        if self.paused.get(slug):
            return None if charger.resume_first else 0.0
        return self.limit_a.get(slug)

    def on_meter_reading(self, current_a: Phases) -> None:
        """A good meter reading: a phase above the limit starts a round at once."""
        if self._all_seen():
            base = self._base_of(current_a)
            previous, self._last_base = self._last_base, base
            stable = previous is not None and all(
                abs(b - p) < BASE_STABLE_A for b, p in zip(base, previous, strict=True)
            )
            if stable and self._limits_settled(self.clock()):
                self._settled_base = base
        # else: a charger with no record yet would count as building load (at start-up, every car
        # charging then looks like the building, and the first round would pause them all).
        if max(current_a) > self.config.limit_a:
            self._urgent = True
            if self._sleeper is not None:
                self._sleeper.wake()

    def update(self, config: SiteControlConfig) -> None:
        """A reloaded configuration: overrides take effect next round; any other change re-does the
        failsafe set-up (and restarts the meter reader if the meter changed)."""
        if config == self.config:
            return
        old = self.config
        self.config = config
        if config.without_overrides() != old.without_overrides():
            logger.info("%s: configuration changed; the failsafe is set again", config.site)
            self._shares = None
            self.failsafe_done.clear()
            self.failsafe_refused.clear()
        if config.meter != old.meter:
            self._stop_meter()
            self._make_meter()
            if self._meter_task is None and self._sleeper is not None:
                self._start_meter()

    # --- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Rounds every period (and urgent ones) until stop is set; a failing round never ends it."""
        sleeper = self._sleeper = StopWatch(stop)
        self._start_meter()
        try:
            # The first round waits (up to START_WAIT_PERIODS) for a record of every charger (without
            # one a charger counts as offline, at its failsafe current) and, with a meter, for a
            # settled base load (else the configured one: a restart must not pause cars that
            # charge within the limit).
            deadline = self.clock() + START_WAIT_PERIODS * self.config.period_s
            while not self._ready_to_start() and self.clock() < deadline:
                if await sleeper.wait(min(0.1, deadline - self.clock())):
                    return
            next_at = self.clock()
            while not stop.is_set():
                now = self.clock()
                if now >= next_at:
                    self.run_round()
                    next_at = max(next_at + self.config.period_s, self.clock())
                elif self._urgent and now - (self._last_round_at or 0.0) >= URGENT_MIN_GAP_S:
                    self.counters.urgent += 1
                    self.run_round(urgent=True)
                self._release_increases()
                wake_at = next_at
                if self._urgent:
                    wake_at = min(wake_at, (self._last_round_at or 0.0) + URGENT_MIN_GAP_S)
                await sleeper.wait(wake_at - self.clock())
        finally:
            self._sleeper = None
            sleeper.close()
            self._stop_meter()
            if self._meter_task is not None:
                await asyncio.gather(self._meter_task, return_exceptions=True)
                self._meter_task = None

    def run_round(self, *, urgent: bool = False) -> SiteStatus | None:
        """One round: measure, share, send, publish. Never raises (a defect is logged and said)."""
        started = time.perf_counter()
        self._urgent = False
        self._last_round_at = self.clock()
        self._round += 1
        self.counters.periods += 1
        status = None
        try:
            status = self._round_work(urgent)
            self.counters.failed_in_a_row = 0
        except Exception as exc:
            self.counters.errors += 1
            self.counters.failed_in_a_row += 1
            logger.exception("%s: the control round failed; the chargers keep their limits", self.config.site)
            self.reason = (
                f"the controller failed this round ({type(exc).__name__}: {exc}); the chargers keep their limits"
            )
            status = self._error_status()
        self.counters.last_period_s = time.perf_counter() - started
        if status is not None:
            try:
                self.publish_status(status)
            except Exception:
                logger.exception("%s: could not publish the site status", self.config.site)
            self.last_status = status
        return status

    def _round_work(self, urgent: bool) -> SiteStatus:
        now_s = self.clock()
        self._forget_lost(datetime.now(UTC))
        shares, warning = self._failsafe_shares()
        inputs = self._charger_inputs(now_s, shares)
        actual_sum = _sum_phases(c.actual_a for c in inputs if not c.offline)
        configured_base: Phases = (self.config.base_load_a,) * 3  # type: ignore[assignment]
        estimate = _add(actual_sum, configured_base)
        meter = self.meter
        meter_age_s = None if meter is None else meter.age_s(now_s)
        if self.config.meter is None:
            state, source, draw, base, reason = "controlling", "estimate", estimate, configured_base, None
        elif meter is not None and not meter.stale(now_s) and meter.current_a is not None:
            draw = meter.current_a
            base = tuple(max(0.0, d - a) for d, a in zip(draw, actual_sum, strict=True))  # type: ignore[assignment]
            settled = self._settled_base if self._settled_base is not None else configured_base
            if urgent:
                # A real rise: kept for the rounds until the limits settle (they would share against
                # the base from before the rise otherwise, and go over again).
                base = tuple(max(b, s) for b, s in zip(base, settled, strict=True))  # type: ignore[assignment]
                self._settled_base = base
            else:
                base = settled
            state, source, reason = "controlling", "meter", None
        else:
            state, source, draw, base = "fallback", "fallback", estimate, configured_base
            # A meter whose profile cannot be read is as blind as a dead one: fallback, not estimate.
            age = "never read" if meter_age_s is None else f"not read for {meter_age_s:.0f} s"
            problem = "its profile cannot be read" if meter is None else (meter.problem or "no good reading")
            reason = f"the site meter is stale ({age}: {problem}); every charger gets its failsafe share"
        if state == "fallback":
            decisions = fallback_decisions(inputs, shares)
        else:
            site = SiteInput(
                limit_a=self.config.limit_a,
                margin_a=self.config.margin_a,
                base_load_a=base,
                limit_kw=self.config.limit_kw,
            )
            decisions = allocation.allocate(site, inputs, self.memory)
        if warning:  # the failsafe plan's (a configured current not used, failsafe currents over the room)
            reason = f"{reason}; {warning}" if reason else warning
        if state != self.state:
            logger.log(
                logging.WARNING if state == "fallback" else logging.INFO,
                "%s: %s%s",
                self.config.site,
                state,
                f" ({reason})" if reason else "",
            )
        self.state, self.reason = state, reason
        self._send_failsafe(inputs, shares)
        self._send(decisions, inputs)
        return self._status(decisions, inputs, draw, base, source, meter_age_s)

    # --- commands ----------------------------------------------------------------------------
    def _send(self, decisions: list[Decision], inputs: list[ChargerInput]) -> None:
        """Decreases now; increases once the decreases are verified (or now if there are none)."""
        by_slug = {c.slug: c for c in self.config.chargers}
        decreases: list[Pending] = []
        increases: list[Pending] = []
        pending_targets = self._pending_targets()
        for decision in decisions:
            charger = by_slug.get(decision.slug)
            if charger is None or not charger.can_limit or decision.state in ("offline", "unresponsive"):
                continue
            target = decision.current_a
            on_its_way = pending_targets.get(decision.slug)
            if on_its_way is not None and target >= on_its_way:
                # One change at a time per charger: a paced one (KEBA: 5 s between writes, 5 s to
                # settle) would queue every round's and see them expire. Only a further cut goes now.
                continue
            for kind, action, value in self._steps(charger, target):
                item = Pending(self._command(charger.slug, action, value), kind, self._round)
                (decreases if kind == DECREASE else increases).append(item)
        self._held_increases = None  # an older round's held increases are superseded by this one
        for item in decreases:
            self._deliver(item)
        if increases:
            # Any decrease still on its way (this round's or an earlier one's, a KEBA settles 5 s) holds them.
            if any(p.kind == DECREASE for p in self.pending.values()):
                self._held_increases = (self._round, increases)
            else:
                for item in increases:
                    self._deliver(item)

    def _steps(self, charger: ChargerConfig, target_a: float) -> list[tuple[str, str, float | None]]:
        """The commands that take a charger from what it holds to target_a (0: paused), each a
        decrease or an increase of what it may draw."""
        slug = charger.slug
        held = self.limit_a.get(slug)
        paused = self.paused.get(slug)
        if target_a <= 0:
            if paused is True:
                return []
            if charger.can_pause:
                return [(DECREASE, CommandAction.PAUSE, None)]
            return [] if held == charger.min_a else [(DECREASE, CommandAction.SET_CURRENT_LIMIT, charger.min_a)]
        steps: list[tuple[str, str, float | None]] = []
        if held != target_a or (paused is not False and not charger.resume_first and charger.can_pause):
            # Unknown (None) counts as a decrease: the first write bounds a charger that was free.
            rising = paused is True or (held is not None and target_a > held)
            steps.append((INCREASE if rising else DECREASE, CommandAction.SET_CURRENT_LIMIT, target_a))
        if charger.resume_first and paused is not False:
            steps.append((INCREASE, CommandAction.RESUME, None))
        return steps

    def _command(self, slug: str, action: str, value: float | None) -> CommandMessage:
        now = datetime.now(UTC)
        return CommandMessage(
            id=str(uuid.uuid4()),
            charge_point=slug,
            site=self.config.site,
            action=action,
            value=value,
            user=f"controller:{self.config.site}",
            created_at=now,
            expires_at=now + timedelta(seconds=max(EXPIRY_PERIODS * self.config.period_s, EXPIRY_MIN_S)),
        )

    def _deliver(self, item: Pending) -> None:
        if item.command.action in LIMIT_ACTIONS:
            self._limits_changed_at = self.clock()
        self.pending[item.command.id] = item
        self.counters.commands[item.command.action] += 1
        try:
            self.deliver(item.command)
        except Exception:
            del self.pending[item.command.id]
            raise

    def _release_increases(self) -> None:
        """Send the held increases once no decrease is on its way (a failed one dropped them)."""
        if self._held_increases is None:
            return
        if any(p.kind == DECREASE for p in self.pending.values()):
            return
        _round, increases = self._held_increases
        self._held_increases = None
        for item in increases:
            self._deliver(item)

    def _pending_targets(self) -> dict[str, float]:
        """The limit each charger's latest pending command takes it to (0 for a pause)."""
        targets: dict[str, float] = {}
        for item in self.pending.values():
            if item.command.action == CommandAction.SET_CURRENT_LIMIT:
                targets[item.command.charge_point] = float(item.command.value or 0.0)
            elif item.command.action == CommandAction.PAUSE:
                targets[item.command.charge_point] = 0.0
        return targets

    def _forget_lost(self, now: datetime) -> None:
        """Pending commands with no result long after their expiry (dropped somewhere): forgotten."""
        lost = [
            key
            for key, item in self.pending.items()
            if now > item.command.expires_at + timedelta(seconds=PENDING_GRACE_S)
        ]
        for key in lost:
            item = self.pending.pop(key)
            logger.warning(
                "%s: no result for %s on %s; sent again if still needed",
                self.config.site,
                item.command.action,
                item.command.charge_point,
            )

    # --- failsafe ----------------------------------------------------------------------------
    def _failsafe_shares(self) -> tuple[dict[str, float], str | None]:
        if self._shares is None:
            self._shares = failsafe_shares(self.config)
            if self._shares[1]:
                logger.warning("%s: %s", self.config.site, self._shares[1])
        return self._shares

    def _send_failsafe(self, inputs: list[ChargerInput], shares: dict[str, float]) -> None:
        """Each online, responsive charger whose profile has them gets its failsafe current and timeout."""
        pending = {(p.command.charge_point, p.command.action) for p in self.pending.values() if p.kind == FAILSAFE}
        by_slug = {c.slug: c for c in self.config.chargers}
        for charger_input in inputs:
            charger = by_slug[charger_input.slug]
            if charger_input.offline or not charger_input.responsive:
                continue
            if not (charger.failsafe_current or charger.failsafe_timeout_s is not None):
                if charger.slug not in self._told_no_failsafe:
                    self._told_no_failsafe.add(charger.slug)
                    logger.info(
                        "%s: %s (%s) has no failsafe current in its profile; it keeps its last limit if the "
                        "poller dies",
                        self.config.site,
                        charger.slug,
                        charger.profile,
                    )
                continue
            wanted = []
            if charger.failsafe_current:
                wanted.append((CommandAction.SET_FAILSAFE_CURRENT, shares.get(charger.slug, 0.0)))
            if charger.failsafe_timeout_s is not None:
                wanted.append((CommandAction.SET_FAILSAFE_TIMEOUT, float(charger.failsafe_timeout_s)))
            done = self.failsafe_done.get(charger.slug, {})
            for action, value in wanted:
                key = (charger.slug, action)
                if done.get(action) == value or key in pending or key in self.failsafe_refused:
                    continue
                self._deliver(Pending(self._command(charger.slug, action, value), FAILSAFE, self._round))

    # --- measuring ---------------------------------------------------------------------------
    def _charger_inputs(self, now_s: float, shares: dict[str, float]) -> list[ChargerInput]:
        fresh_s = max(RECORD_FRESH_PERIODS * self.config.period_s, RECORD_FRESH_MIN_S)
        overrides = {o.charge_point: o.current_a for o in self.config.overrides}
        inputs = []
        for charger in self.config.chargers:
            seen = self.records.get(charger.slug)
            record = seen[0] if seen is not None else None
            offline = record is None or record["status"] == OperatorStatus.OFFLINE or now_s - seen[1] > fresh_s
            actual: Phases = (0.0, 0.0, 0.0) if offline else rotate(record, charger.wiring)
            phases = charger.phases
            drawn = tuple(a > PHASE_DRAWN_A for a in actual)
            if any(drawn):
                phases = tuple(
                    w and d for w, d in zip(phases, drawn, strict=True)
                )  # a 1-phase car on a 3-phase charger
            held = self.limit_a.get(charger.slug)
            in_force = 0.0 if self.paused.get(charger.slug) else held
            wants_current = not offline and record["status"] in WANTS_CURRENT
            responsive = self.unresponsive_until.get(charger.slug, 0.0) <= now_s
            demand_a = None
            if wants_current and responsive:
                changed_at = self._charger_changed_at.get(charger.slug, -math.inf)
                demand_a = self.demand.observe(
                    charger.slug,
                    drawn_a=max(actual),
                    held_a=in_force,
                    settled=seen[1] - changed_at >= DEMAND_SETTLE_S,
                    record_at=seen[1],
                )
            else:
                self.demand.forget(charger.slug)
            inputs.append(
                ChargerInput(
                    slug=charger.slug,
                    phases=phases,  # type: ignore[arg-type]
                    min_a=charger.min_a,
                    max_a=charger.max_a,
                    priority=charger.priority,
                    wants_current=wants_current,
                    actual_a=actual,
                    in_force_a=in_force if in_force is not None or offline else _found_limit_a(record, actual),
                    responsive=responsive,
                    override_a=overrides.get(charger.slug),
                    offline=offline,
                    failsafe_a=shares.get(charger.slug, 0.0),
                    demand_a=demand_a,
                )
            )
        return inputs

    def _status(
        self,
        decisions: list[Decision],
        inputs: list[ChargerInput],
        draw: Phases,
        base: Phases,
        source: str,
        meter_age_s: float | None,
    ) -> SiteStatus:
        by_slug = {c.slug: c for c in inputs}
        overrides = {o.charge_point: o for o in self.config.overrides}
        allocated = [0.0, 0.0, 0.0]
        shares = []
        for decision in decisions:
            charger = by_slug[decision.slug]
            for phase, on in enumerate(charger.phases):
                if on:
                    allocated[phase] += decision.current_a
            override = overrides.get(decision.slug)
            reason = decision.reason
            if override is not None and "override" in reason and "until" not in reason:
                reason = f"{reason} until {override.expires_at:%H:%M} UTC"
            shares.append(
                ChargerShare(
                    charge_point=decision.slug,
                    allocated_a=decision.current_a,
                    actual_a=tuple(round(a, 2) for a in charger.actual_a),  # type: ignore[arg-type]
                    state=decision.state,
                    reason=reason,
                    priority=charger.priority,
                    override_a=None if override is None else override.current_a,
                    override_until=None if override is None else override.expires_at,
                )
            )
        return SiteStatus(
            site=self.config.site,
            at=datetime.now(UTC),
            poller=self.poller_id,
            state=self.state,
            reason=self.reason,
            limit_a=self.config.limit_a,
            limit_kw=self.config.limit_kw,
            margin_a=self.config.margin_a,
            draw_a=_round(draw),
            draw_source=source,
            meter_age_s=None if meter_age_s is None else round(meter_age_s, 2),
            base_load_a=_round(base),
            allocated_a=_round(tuple(allocated)),  # type: ignore[arg-type]
            chargers=tuple(shares),
        )

    def _error_status(self) -> SiteStatus | None:
        """The last status with the failure's reason (the page shows why nothing changed)."""
        from dataclasses import replace

        state = self.state
        if self.last_status is None:
            zero = (0.0, 0.0, 0.0)
            return SiteStatus(
                site=self.config.site,
                at=datetime.now(UTC),
                poller=self.poller_id,
                state=state,
                reason=self.reason,
                limit_a=self.config.limit_a,
                draw_a=zero,
                draw_source="estimate" if self.meter is None else "fallback",
                base_load_a=zero,
                allocated_a=zero,
            )
        return replace(self.last_status, at=datetime.now(UTC), state=state, reason=self.reason)

    # --- helpers -----------------------------------------------------------------------------
    def _charger(self, slug: str) -> ChargerConfig | None:
        return next((c for c in self.config.chargers if c.slug == slug), None)

    def _all_seen(self) -> bool:
        return all(c.slug in self.records for c in self.config.chargers)

    def _ready_to_start(self) -> bool:
        if not self._all_seen():
            return False
        meter = self.meter
        if meter is None:
            return True
        if meter.age_s(self.clock()) is None:
            return meter.problem is not None  # not read yet: wait, unless it already failed (fallback)
        return meter.stale(self.clock()) or self._settled_base is not None

    def _limits_settled(self, now_s: float) -> bool:
        """Whether every car has had time to follow the last limit change and its record to show it."""
        return now_s - self._limits_changed_at >= BASE_SETTLE_S

    def _base_of(self, draw_a: Phases) -> Phases:
        """The meter's draw less the chargers' own latest currents, per phase (never negative)."""
        totals = [0.0, 0.0, 0.0]
        by_slug = {charger.slug: charger for charger in self.config.chargers}
        for slug, (record, _seen) in self.records.items():
            charger = by_slug.get(slug)
            if charger is not None and record["status"] != OperatorStatus.OFFLINE:
                for phase, current in enumerate(rotate(record, charger.wiring)):
                    totals[phase] += current
        return tuple(max(0.0, d - t) for d, t in zip(draw_a, totals, strict=True))  # type: ignore[return-value]

    def _make_meter(self) -> None:
        self.meter = None
        if self.config.meter is not None:
            try:
                self.meter = self.meter_factory(self.config.meter, clock=self.clock, on_reading=self.on_meter_reading)
            except Exception:
                logger.exception("%s: the meter cannot be read through its profile", self.config.site)

    def _start_meter(self) -> None:
        if self.meter is not None and self._meter_task is None:
            self._meter_stop = asyncio.Event()
            self._meter_task = asyncio.create_task(self.meter.run(self._meter_stop), name=f"meter:{self.config.site}")

    def _stop_meter(self) -> None:
        self._meter_stop.set()
        if self._meter_task is not None and self._meter_task.done():
            self._meter_task = None


def _found_limit_a(record: Record, actual: Phases) -> float | None:
    """What a charger found charging (a restarted controller has verified nothing yet) holds: the
    limit it reads back, else at least what its car draws. Its first share then starts from there,
    not from the minimum: a restart must not cut every car to 6 A and ramp it back up."""
    drawn_a = max(actual)
    if drawn_a <= PHASE_DRAWN_A:
        return None
    read = (record.get("values") or {}).get("current_limit_a")
    if isinstance(read, int | float) and read > 0:
        return float(read)
    return float(math.floor(drawn_a))


def fallback_decisions(inputs: list[ChargerInput], shares: dict[str, float]) -> list[Decision]:
    """Without a fresh meter: every charger at its failsafe share (0 if below its minimum)."""
    decisions = []
    for charger in inputs:
        share = shares.get(charger.slug, 0.0)
        if charger.offline:
            decisions.append(Decision(charger.slug, share, "offline", f"offline: counted at its failsafe {share:g} A"))
        elif not charger.responsive:
            drawn = max(charger.actual_a)
            decisions.append(
                Decision(charger.slug, drawn, "unresponsive", f"ignored a write: counted at its draw {drawn:.1f} A")
            )
        else:
            current = share if share >= charger.min_a else 0.0
            state = ("charging" if current else "paused") if charger.wants_current else "idle"
            decisions.append(Decision(charger.slug, current, state, f"fallback: the failsafe share {current:g} A"))
    return decisions


def _sum_phases(phases) -> Phases:
    total = [0.0, 0.0, 0.0]
    for item in phases:
        for index in range(3):
            total[index] += item[index]
    return (total[0], total[1], total[2])


def _add(a: Phases, b: Phases) -> Phases:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _round(phases: Phases) -> Phases:
    return (round(phases[0], 2), round(phases[1], 2), round(phases[2], 2))
