"""The soft-PLC poll loop: every enabled charge point polled concurrently, decoded, published."""

import array
import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from gateway.choices import CommandAction, CommandStatus, FailureReason, PollGroup
from gateway.commands.execute import execute_command
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.commands.queue import CommandHooks, CommandQueue, LoggedResults
from gateway.conf import setting
from gateway.metrics.histogram import BucketCounts
from gateway.modbus.client import RequestTimeout
from gateway.modbus.connection import (
    ChargePointConnection,
    ConnectionFailed,
    DeviceException,
    ModbusError,
    PaceInterrupted,
)
from gateway.modbus.pacing import SLOW_GROUP_INTERVAL_S, Pacing, effective_pacing
from gateway.modbus.planner import ReadRequest, plan_reads
from gateway.profiles.codec import Value
from gateway.profiles.compiled import ProfileDecoder, compile_profile
from gateway.profiles.encode import WriteRangeError, encode_checked_write
from gateway.profiles.spec import ProfileSpec
from gateway.runtime import Backoff, StopWatch, wait_unless_stopped
from gateway.telemetry import Record, build_record

logger = logging.getLogger(__name__)

# A charge point loop that crashed is restarted after this, doubling up to RECONNECT_BACKOFF_MAX_S.
CRASH_RESTART_FIRST_S = 1.0
# Polls are spread over the interval, up to this many seconds (ChargePointPoller.first_poll_at).
STAGGER_MAX_S = 1.0
# Slots fall on a 10 ms grid: the charge points of one slot wake in one turn of the event loop,
# instead of one wake-up (a system call or two) per poll, the main cost at a few hundred a second.
SLOT_GRID_S = 0.01
Publish = Callable[[Record], None]
Clock = Callable[[], float]
# Why a poll lost data (PollStats.failures): the charge point unreachable or its link dropped, a
# request that timed out, an exception response to a block, a value (or a short answer) not decoded.
POLL_FAILURE_REASONS = ("connection", "timeout", "device_exception", "decode")


@dataclass(frozen=True)
class ProfilePlan:
    """A profile's planned reads (fast and slow groups) and its decoder, compiled once per profile
    per reload and shared by all its charge points (5,000 copies would cost memory and start-up)."""

    fast: tuple[ReadRequest, ...]
    slow: tuple[ReadRequest, ...]
    decoder: ProfileDecoder


def plan_profile(profile: ProfileSpec) -> ProfilePlan:
    """Plan a profile's reads and compile its decoding; raises whatever is wrong with it."""
    fast = tuple(plan_reads(profile, (PollGroup.FAST,)))
    slow = tuple(plan_reads(profile, (PollGroup.SLOW,)))
    return ProfilePlan(fast, slow, compile_profile(profile, fast + slow))


@dataclass(frozen=True)
class ChargePointConfig:
    """What the poller needs to know of a charge point; a change restarts its loop."""

    slug: str
    site: str
    host: str
    port: int
    unit_id: int
    interval_ms: int
    profile: ProfileSpec
    pacing: Pacing = field(default_factory=Pacing)  # the profile's vendor pacing unless the charge point overrides it
    # Derived from `profile` (so not compared): shared by the charge points of one reload.
    plan: ProfilePlan | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class UnloadableChargePoint:
    """An enabled charge point whose profile cannot be loaded: reported, not polled."""

    slug: str
    site: str
    profile: str
    reason: str


@dataclass(frozen=True)
class FleetConfig:
    """What one reload found: the charge points to poll and those whose profile is broken."""

    configs: list[ChargePointConfig] = field(default_factory=list)
    unloadable: list[UnloadableChargePoint] = field(default_factory=list)


# A profile's spec and compiled plan as the last reload left them, by profile id (see load_fleet).
KnownProfiles = dict[int, tuple[ProfileSpec, ProfilePlan]]


def load_fleet(site: str | None = None, known: KnownProfiles | None = None) -> FleetConfig:
    """Read enabled charge points (optionally of one site) from the database.

    A profile that cannot be loaded takes out only its own charge points (reported in
    `unloadable`), so one bad edit never freezes reloads for the whole fleet.

    Cheap at thousands of charge points, as it runs every RELOAD_INTERVAL_S: the charge points are
    read as plain rows (no model instances), each distinct profile is loaded once, and a profile
    equal to the one in `known` (updated here) keeps that spec and compiled plan, so comparing a
    charge point's config with the running one is an identity check, not a walk of the profile.
    """
    from gateway.models import ChargePoint, DeviceProfile
    from gateway.profiles.store import load_spec

    close_old_connections()
    known = {} if known is None else known
    queryset = ChargePoint.objects.filter(enabled=True)
    if site:
        queryset = queryset.filter(site__slug=site)
    rows = list(
        queryset.order_by("pk").values_list(
            "slug",
            "site__slug",
            "host",
            "port",
            "unit_id",
            "poll_interval_ms",
            "request_gap_ms",
            "write_gap_ms",
            "profile_id",
        )
    )
    profiles = DeviceProfile.objects.filter(pk__in={row[-1] for row in rows})
    loaded: dict[int, tuple[ProfileSpec, ProfilePlan] | str] = {}
    slugs: dict[int, str] = {}
    for profile in profiles.prefetch_related("registers", "status_rules"):
        slugs[profile.pk] = profile.slug
        try:
            spec = load_spec(profile)
            if profile.pk in known and known[profile.pk][0] == spec:
                loaded[profile.pk] = known[profile.pk]
            else:
                loaded[profile.pk] = known[profile.pk] = (spec, plan_profile(spec))
        except Exception as exc:  # any defect of the stored profile is that profile's problem
            known.pop(profile.pk, None)
            loaded[profile.pk] = f"profile {profile.slug} cannot be loaded: {type(exc).__name__}: {exc}"
    for gone in known.keys() - loaded.keys():
        del known[gone]
    fleet = FleetConfig()
    for slug, site_slug, host, port, unit_id, interval_ms, request_gap_ms, write_gap_ms, profile_id in rows:
        entry = loaded[profile_id]
        if isinstance(entry, str):
            fleet.unloadable.append(UnloadableChargePoint(slug, site_slug, slugs[profile_id], entry))
            continue
        spec, plan = entry
        fleet.configs.append(
            ChargePointConfig(
                slug=slug,
                site=site_slug,
                host=host,
                port=port,
                unit_id=unit_id,
                interval_ms=interval_ms,
                profile=spec,
                pacing=effective_pacing(spec, request_gap_ms, write_gap_ms),
                plan=plan,
            )
        )
    return fleet


def load_configs(site: str | None = None) -> list[ChargePointConfig]:
    """The charge points to poll (those whose profile cannot be loaded are left out: see load_fleet)."""
    return load_fleet(site).configs


class PollStats:
    """Records published and poll lateness (start vs schedule) since the last stats line; and,
    since start, the counters /metrics reads (gateway/metrics/poller.py).

    The counters are ints, a dict whose keys never change and BucketCounts: a poll pays a few
    integer increments for them, and the metrics thread can read them while the loop runs.
    """

    def __init__(self) -> None:
        self.records = 0
        self.lateness_s = array.array("d")  # compact: 5,000 charge points for 60 s is 300,000 values
        self.published = 0  # records of the charge points' loops (not reset by take_line)
        self.polls = 0
        self.failures = dict.fromkeys(POLL_FAILURE_REASONS, 0)  # polls that lost data, once per reason
        self.heartbeats = 0  # heartbeat writes that got through
        self.poll_duration = BucketCounts()
        self.lateness = BucketCounts()

    def note_lateness(self, lateness_s: float) -> None:
        self.lateness_s.append(lateness_s)
        self.lateness.observe(lateness_s)

    def take_line(self, charge_points: int) -> str:
        """The stats line for the period since the last one; starts a new period."""
        ordered = sorted(self.lateness_s)
        line = (
            f"poller stats: charge_points={charge_points} records={self.records} "
            f"lateness_p50_ms={_percentile(ordered, 50) * 1000:.1f} "
            f"lateness_p99_ms={_percentile(ordered, 99) * 1000:.1f}"
        )
        self.records = 0
        self.lateness_s = array.array("d")
        return line


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def failure_reason(exc: ConnectionFailed) -> str:
    """Why a poll lost its connection: "timeout" (a connect or a request timed out) or "connection"."""
    cause = exc.__cause__ or exc.__context__
    return "timeout" if isinstance(cause, TimeoutError | RequestTimeout) else "connection"


def error_record(
    *, charge_point: str, site: str, profile: str, seq: int, error: str, active_limit_a: float | None = None
) -> Record:
    """An offline, bad-quality record whose error tells the operator why nothing was read."""
    return build_record(
        charge_point=charge_point,
        site=site,
        profile=profile,
        seq=seq,
        fields=None,
        error=error,
        active_limit_a=active_limit_a,
    )


class ChargePointPoller:
    """Polls one charge point over its own persistent connection, with backoff when it is down.

    `clock` (monotonic seconds) schedules polls, heartbeats and the slow group; tests inject one.
    `seq` continues a sequence a crashed predecessor left off. `commands` is the charge point's
    queue (the Poller's, so it outlives this loop): drained between polls, one command at a time,
    each result handed to `hooks.finish`.
    """

    def __init__(
        self,
        config: ChargePointConfig,
        publish: Publish,
        *,
        clock: Clock = time.monotonic,
        seq: int = 0,
        stats: PollStats | None = None,
        commands: CommandQueue | None = None,
        hooks: CommandHooks | None = None,
        poller_id: str = "",
    ) -> None:
        self.config = config
        self.publish = publish
        self.clock = clock
        self.stats = stats or PollStats()
        self.connection = ChargePointConnection(
            config.host, config.port, config.unit_id, setting("MODBUS_TIMEOUT_S"), pacing=config.pacing
        )
        plan = config.plan or plan_profile(config.profile)
        self.fast_plan, self.slow_plan, self.decoder = plan.fast, plan.slow, plan.decoder
        self.seq = seq
        self.failures = 0
        # Reconnects: twice the poll interval after the first failure, doubling up to the maximum.
        self.backoff = Backoff(first_s=2 * config.interval_ms / 1000, max_s=setting("RECONNECT_BACKOFF_MAX_S"))
        self.heartbeats_sent = 0
        self.last_poll_s = 0.0  # how long the last poll took (per charge point metrics)
        self._slow_values: dict[str, Value] = {}
        self._last_values: dict[str, Value] = {}
        self._slow_read_at = -SLOW_GROUP_INTERVAL_S
        self._heartbeat_due: dict[str, float] = {}
        self.commands = CommandQueue() if commands is None else commands
        self.hooks: CommandHooks = hooks or LoggedResults()
        self.poller_id = poller_id
        self._sleeper: StopWatch | None = None
        # A heartbeat on the set_current_limit register writes the held setpoint instead of its
        # own value, so an operator's limit outlives the charger's watchdog (Alfen's validity time).
        limit = config.profile.command(CommandAction.SET_CURRENT_LIMIT)
        pause = config.profile.command(CommandAction.PAUSE)
        self._limit_register = limit.register if limit is not None and limit.supported else None
        self._pause_setpoint: float | None = None  # what the limit register holds while paused through it
        if self._limit_register and pause is not None and pause.supported and pause.register == self._limit_register:
            self._pause_setpoint = 0.0 if pause.value is None else pause.value

    async def poll_once(self) -> Record:
        """Connect if needed, read, decode, publish one record (offline if unreachable)."""
        started = self.clock()
        stats = self.stats
        try:
            await self.connection.ensure_connected()
            record = await self._read_record(started)
            await self._send_due_heartbeats(self.clock())
        except ConnectionFailed as exc:
            stats.failures[failure_reason(exc)] += 1
            self.failures += 1
            if self.failures == 1:
                logger.warning("%s offline: %s", self.config.slug, exc)
            record = self._record(None, error=str(exc))
        else:
            if self.failures:
                logger.info("%s back online after %d failed polls", self.config.slug, self.failures)
            self.failures = 0
            self.backoff.reset()
        self.last_poll_s = duration_s = self.clock() - started
        stats.polls += 1
        stats.poll_duration.observe(duration_s)
        self.publish(record)
        return record

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at the configured interval until stop is set; the current poll finishes unless it
        is waiting to pace a request (a paced KEBA poll takes seconds): then it is abandoned.

        Heartbeats due between two polls are written on time, so a watchdog shorter than the
        poll interval (Schneider: 2 s) still holds.
        """
        interval_s = self.config.interval_ms / 1000
        next_poll_at = self.first_poll_at(self.clock())
        self.connection.stop = stop
        sleeper = self._sleeper = StopWatch(stop)
        self.commands.attach(sleeper.wake)
        pending = self.commands.pending
        try:
            while not stop.is_set():
                if (now := self.clock()) >= next_poll_at:
                    self.stats.note_lateness(now - next_poll_at)
                    await self.poll_once()
                    next_poll_at = self._next_poll_at(next_poll_at, interval_s)
                elif self.connection.connected:
                    with contextlib.suppress(ConnectionFailed):  # the next poll reports it
                        await self._send_due_heartbeats(self.clock())
                if pending and not stop.is_set():
                    # One command, then a poll if one is due: a write never interleaves with a read.
                    # A stopping loop leaves the queue to its successor (or to a restarted poller).
                    await self.run_next_command()
                    continue
                await sleeper.wait(self._wake_at(next_poll_at) - self.clock())
        except PaceInterrupted:
            logger.debug("%s: stopped while pacing; the poll in progress is abandoned", self.config.slug)
        finally:
            self.commands.attach(None)
            self._sleeper = None
            sleeper.close()
            await self.connection.close()

    async def run_next_command(self) -> CommandResult | None:
        """Execute the oldest queued command and hand its result to hooks.finish (None: queue empty)."""
        command = self.commands.take()
        if command is None:
            return None
        try:
            result = await self._execute(command)
        except Exception as exc:
            # A defect, not a charger's answer: report it (never retried), then crash the loop as usual.
            self.hooks.finish(
                CommandResult.failed(
                    command,
                    FailureReason.INTERRUPTED,
                    f"the poller's loop for this charge point failed while executing it "
                    f"({type(exc).__name__}: {exc}); not retried",
                    poller=self.poller_id,
                )
            )
            raise
        if result.status == CommandStatus.APPLIED:
            self._hold(command)
        level = logging.INFO if result.status == CommandStatus.APPLIED else logging.WARNING
        logger.log(
            level,
            "%s: command %s %s %s: %s",
            self.config.slug,
            command.id,
            command.action,
            "" if command.value is None else f"{command.value:g}",
            result.reason or f"applied (read back {result.read_back})",
        )
        self.hooks.finish(result)
        return result

    async def _execute(self, command: CommandMessage) -> CommandResult:
        connected = self.connection.connected
        if not connected and not self.failures:
            # No poll has failed since the link was last up (or none ran yet): connect now. After a
            # failed poll the command fails at once as offline instead of waiting for the backoff.
            try:
                await self.connection.ensure_connected()
                connected = True
            except ConnectionFailed as exc:
                logger.info("%s: cannot connect for command %s: %s", self.config.slug, command.id, exc)
        spec = self.config.profile.command(command.action)
        written = spec.register if spec is not None else ""

        async def settle(seconds: float) -> bool:
            return await self._settle(seconds, written)

        return await execute_command(
            self.connection,
            self.config.profile,
            command,
            hooks=self.hooks,
            poller=self.poller_id,
            held_limit_a=self.commands.held_limit_a,
            connected=connected,
            settle=settle,
        )

    async def _settle(self, seconds: float, written: str) -> bool:
        """Wait a command's settle time, writing the heartbeats that fall due meanwhile (a lifebit
        must not lapse) except on the register the command just wrote: that write refreshed its
        watchdog, and a heartbeat there would overwrite it before the read-back. Returns whether stopping."""
        now = self.clock()
        deadline = now + seconds
        for heartbeat in self.config.profile.heartbeats:
            if heartbeat.register == written:
                self._heartbeat_due[heartbeat.register] = now + heartbeat.interval_s
        stop = self.connection.stop or asyncio.Event()
        while (now := self.clock()) < deadline:
            due = [at for register, at in self._heartbeat_due.items() if register != written]
            wake_at = min(deadline, *due) if due and self.connection.connected else deadline
            if self._sleeper is not None:
                stopped = await self._sleeper.wait(wake_at - now)
            else:
                stopped = await wait_unless_stopped(stop, wake_at - now)
            if stopped:
                return True
            if self.connection.connected:
                try:
                    await self._send_due_heartbeats(self.clock(), skip=written)
                except ConnectionFailed:
                    pass  # the read-back reports it
                except PaceInterrupted:
                    return True  # stopping while a heartbeat waited for its turn
        return stop.is_set()

    def _hold(self, command: CommandMessage) -> None:
        """Note what an applied command changed: the limit held, or the pause state."""
        if command.action == CommandAction.SET_CURRENT_LIMIT:
            # A new limit written to the register a pause wrote 0 to also ends that pause.
            self.commands.hold(limit_a=command.value, paused=False if self._pause_setpoint is not None else None)
        elif command.action == CommandAction.PAUSE:
            self.commands.hold(paused=True)
        elif command.action == CommandAction.RESUME:
            self.commands.hold(paused=False)

    def _held_setpoint(self) -> float | None:
        """What a heartbeat on the limit register writes now (None: its own value)."""
        if self.commands.paused and self._pause_setpoint is not None:
            return self._pause_setpoint
        return self.commands.held_limit_a

    def first_poll_at(self, now: float) -> float:
        """The charge point's own slot within the interval, from a stable hash of its slug.

        A fleet's polls spread evenly over each interval instead of all falling due at once (5,000
        connects and reads in the same instant would make every one of them late), and a restarted
        loop keeps its slot. The spread is at most STAGGER_MAX_S, so the first poll (which also
        connects, and heartbeats need a connection) comes soon even at a long interval.
        """
        spread_s = min(self.config.interval_ms / 1000, STAGGER_MAX_S)
        slots = max(1, round(spread_s / SLOT_GRID_S))
        slot_s = zlib.crc32(self.config.slug.encode()) % slots * SLOT_GRID_S
        return now + (slot_s - now) % spread_s

    def _wake_at(self, next_poll_at: float) -> float:
        """The next poll, or an earlier heartbeat while connected."""
        if self.connection.connected and self._heartbeat_due:
            return min(next_poll_at, *self._heartbeat_due.values())
        return next_poll_at

    def _next_poll_at(self, previous: float, interval_s: float) -> float:
        now = self.clock()
        if self.failures:
            return now + self.backoff.next_delay_s()
        # Fixed rate; a slow poll skips missed slots instead of bunching up.
        next_at = previous + interval_s
        if next_at < now:
            next_at = now + interval_s - ((now - next_at) % interval_s)
        return next_at

    async def _read_record(self, started: float) -> Record:
        decoded: dict[str, Value] = {}
        problems: list[str] = []
        device_failed = decode_failed = False
        plan = self.fast_plan
        read_slow = self.slow_plan and started - self._slow_read_at >= SLOW_GROUP_INTERVAL_S
        if read_slow:
            plan += self.slow_plan
        for request in plan:
            try:
                words = await self.connection.read(request)
            except ConnectionFailed:
                raise
            except ModbusError as exc:
                # One bad block (e.g. ILLEGAL DATA ADDRESS) loses its values, not the record.
                problems.append(str(exc))
                if isinstance(exc, DeviceException):
                    device_failed = True
                else:
                    decode_failed = True  # an answer too short for the request
                continue
            values, errors = self.decoder.decode_block(request, words)
            decoded.update(values)
            if errors:
                decode_failed = True
                problems += [f"{name}: {reason}" for name, reason in errors.items()]
        if device_failed:
            self.stats.failures["device_exception"] += 1
        if decode_failed:
            self.stats.failures["decode"] += 1
        if read_slow:
            self._slow_read_at = started
            self._slow_values = {
                reg.name: decoded[reg.name]
                for request in self.slow_plan
                for reg in request.registers
                if reg.name in decoded
            }
        decoded = self._slow_values | decoded
        self._last_values = decoded
        fields = self.decoder.telemetry_fields(decoded)
        poll_ms = (self.clock() - started) * 1000
        return self._record(fields, error="; ".join(problems) or None, poll_ms=poll_ms)

    async def _send_due_heartbeats(self, now: float, skip: str = "") -> None:
        """Watchdog writes the profile declares (e.g. a life bit), each at its own interval; the
        limit register's carries the setpoint an operator's command holds."""
        for heartbeat in self.config.profile.heartbeats:
            if now < self._heartbeat_due.get(heartbeat.register, 0.0) or heartbeat.register == skip:
                continue
            self._heartbeat_due[heartbeat.register] = now + heartbeat.interval_s
            value = heartbeat.value
            if heartbeat.register == self._limit_register and (held := self._held_setpoint()) is not None:
                value = held
            elif heartbeat.value_from is not None:
                value = self._last_values.get(heartbeat.value_from)
                if value is None:
                    continue  # nothing read yet to write back
            register = self.config.profile.register(heartbeat.register)
            try:
                await self.connection.write_registers(
                    register.address, encode_checked_write(register, value), register.unit_id
                )
            except ConnectionFailed:
                raise
            except (ModbusError, WriteRangeError) as exc:
                logger.warning("%s heartbeat %s failed: %s", self.config.slug, register.name, exc)
            else:
                self.heartbeats_sent += 1
                self.stats.heartbeats += 1
                # Counted from when the write got through (it may have waited for pacing), so
                # two heartbeats never reach the charger closer than interval_s.
                self._heartbeat_due[heartbeat.register] = self.clock() + heartbeat.interval_s

    def _record(self, fields, *, error: str | None, poll_ms: float | None = None) -> Record:
        self.seq += 1
        return build_record(
            charge_point=self.config.slug,
            site=self.config.site,
            profile=self.config.profile.slug,
            seq=self.seq,
            fields=fields,
            error=error,
            poll_ms=poll_ms,
            active_limit_a=self.commands.active_limit_a,
        )


class Poller:
    """Keeps one ChargePointPoller task per enabled charge point, following the database.

    Timing an operator can rely on: an edit, a newly enabled or a disabled charge point takes
    effect within RELOAD_INTERVAL_S plus the poll in progress (at most MODBUS_TIMEOUT_S + 1 s).
    A restarted charge point connects only once its previous loop has closed its connection.

    Operator commands (submit_command) queue per charge point; the queue and the limit it holds
    survive a restart of the charge point's loop. `hooks` claims and finishes them (the journal and
    the result publisher; default: logged), `poller_id` names this poller in their results.
    """

    def __init__(
        self,
        publish: Publish,
        *,
        site: str | None = None,
        clock: Clock = time.monotonic,
        hooks: CommandHooks | None = None,
        poller_id: str = "",
    ) -> None:
        self.publish = publish
        self.site = site
        self.clock = clock
        self.hooks: CommandHooks = hooks or LoggedResults()
        self.poller_id = poller_id
        self.queues: dict[str, CommandQueue] = {}  # by charge point: exactly those in self.tasks
        self.tasks: dict[str, tuple[ChargePointConfig, asyncio.Task, asyncio.Event]] = {}
        self.pollers: dict[str, ChargePointPoller] = {}  # the running loops, for the metrics (connected)
        self.unloadable: dict[str, UnloadableChargePoint] = {}
        self._retiring: set[asyncio.Task] = set()
        self._seq: dict[str, int] = {}
        self.reloads = 0  # successful reads of the charge points from the database
        self.stats = PollStats()
        self._known_profiles: KnownProfiles = {}  # kept between reloads (load_fleet)

    async def poll_all_once(self) -> list[Record]:
        """Poll every enabled charge point once, concurrently (manage.py runpoller --once)."""
        fleet = await sync_to_async(load_fleet)(self.site)
        pollers = [ChargePointPoller(config, self.publish, clock=self.clock) for config in fleet.configs]
        try:
            records = list(await asyncio.gather(*(p.poll_once() for p in pollers)))
        finally:
            await asyncio.gather(*(p.connection.close() for p in pollers))
        return records + self.report_unloadable(fleet.unloadable)

    def submit_command(self, command: CommandMessage) -> bool:
        """Queue a command for its charge point's loop; False if this poller does not poll it.

        Call from the event loop's thread. A command for a charge point whose loop is restarting
        waits in the queue (its expiry still applies when it is taken).
        """
        queue = self.queues.get(command.charge_point)
        if queue is None:
            return False
        queue.put(command)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Reload definitions every RELOAD_INTERVAL_S and reconcile the running loops."""
        reload_s = setting("RELOAD_INTERVAL_S")
        reload_at = self.clock()
        reporter = asyncio.create_task(self._report_stats(stop), name="poller-stats")
        try:
            while not stop.is_set():
                try:
                    fleet = await sync_to_async(load_fleet)(self.site, self._known_profiles)
                except Exception:
                    # The database being briefly unavailable must not stop polling.
                    logger.exception("could not reload charge points; keeping the current set")
                else:
                    self.reloads += 1
                    self.reconcile(fleet.configs)
                    self.report_unloadable(fleet.unloadable)
                # Fixed rate, so the time a reload takes does not stretch the documented interval.
                reload_at = max(reload_at + reload_s, self.clock())
                await wait_unless_stopped(stop, reload_at - self.clock())
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await self.stop_all()

    async def _report_stats(self, stop: asyncio.Event) -> None:
        """Log records and poll lateness every POLLER_STATS_INTERVAL_S: does the poller keep up?"""
        interval_s = setting("POLLER_STATS_INTERVAL_S")
        report_at = self.clock() + interval_s
        while not await wait_unless_stopped(stop, report_at - self.clock()):
            logger.info("%s", self.stats.take_line(len(self.tasks)))
            report_at = max(report_at + interval_s, self.clock())

    def reconcile(self, configs: list[ChargePointConfig]) -> None:
        """Start new charge points, stop removed or disabled ones, restart changed ones."""
        wanted = {config.slug: config for config in configs}
        previous: dict[str, asyncio.Task] = {}
        for slug in list(self.tasks):
            config, task, task_stop = self.tasks[slug]
            if wanted.get(slug) != config:
                logger.info("stopping %s (%s)", slug, "changed" if slug in wanted else "removed, disabled or broken")
                task_stop.set()
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
                previous[slug] = task
                del self.tasks[slug]
                if slug not in wanted:
                    self._drop_queue(slug)
        for slug, config in wanted.items():
            if slug not in self.tasks:
                task_stop = asyncio.Event()
                queue = self.queues.setdefault(slug, CommandQueue())
                task = asyncio.create_task(
                    self._supervise(config, task_stop, previous.get(slug), queue), name=f"poll:{slug}"
                )
                task.add_done_callback(self._task_done)
                self.tasks[slug] = (config, task, task_stop)
                logger.info(
                    "polling %s at %s:%d unit %d every %d ms (%s)",
                    slug,
                    config.host,
                    config.port,
                    config.unit_id,
                    config.interval_ms,
                    config.profile.slug,
                )

    def _drop_queue(self, slug: str) -> None:
        """A charge point no longer polled here: its queued commands fail now instead of never."""
        for command in self.queues.pop(slug).take_all():
            self.hooks.finish(
                CommandResult.failed(
                    command,
                    FailureReason.OFFLINE,
                    "the charge point is no longer polled (disabled, removed or its profile is broken); not written",
                    poller=self.poller_id,
                )
            )

    def report_unloadable(self, unloadable: list[UnloadableChargePoint]) -> list[Record]:
        """Log and publish (once per new reason) why a charge point is not polled; returns the records."""
        records = []
        current = {item.slug: item for item in unloadable}
        for slug, item in current.items():
            if self.unloadable.get(slug) == item:
                continue
            logger.error("not polling %s: %s", slug, item.reason)
            record = error_record(
                charge_point=slug, site=item.site, profile=item.profile, seq=self._next_seq(slug), error=item.reason
            )
            self.publish(record)
            records.append(record)
        for slug in self.unloadable.keys() - current.keys():
            logger.info("%s: its profile loads again (or it was disabled)", slug)
        self.unloadable = current
        return records

    async def _supervise(
        self, config: ChargePointConfig, stop: asyncio.Event, previous: asyncio.Task | None, queue: CommandQueue
    ) -> None:
        """One charge point's loop: after its predecessor let go of the charger, restarted if it crashes."""
        if previous is not None:
            # A charger allows few connections (Alfen: two in total): the old loop finishes its
            # poll and closes its connection before this one opens another.
            await asyncio.wait({previous})
        restart = Backoff(first_s=CRASH_RESTART_FIRST_S, max_s=setting("RECONNECT_BACKOFF_MAX_S"))
        while not stop.is_set():
            seq_at_start = self._seq.get(config.slug, 0)
            try:
                poller = ChargePointPoller(
                    config,
                    self._counting(config.slug),
                    clock=self.clock,
                    seq=seq_at_start,
                    stats=self.stats,
                    commands=queue,
                    hooks=self.hooks,
                    poller_id=self.poller_id,
                )
                self.pollers[config.slug] = poller
                try:
                    await poller.run(stop)
                finally:
                    del self.pollers[config.slug]  # a changed config's loop starts after this one ended
                return
            except Exception as exc:
                if self._seq.get(config.slug, 0) > seq_at_start:
                    restart.reset()  # it polled before crashing: not a crash loop
                delay_s = restart.peek_s()
                logger.exception("%s: poll loop crashed; restarting in %.1f s", config.slug, delay_s)
                self.publish(
                    error_record(
                        charge_point=config.slug,
                        site=config.site,
                        profile=config.profile.slug,
                        seq=self._next_seq(config.slug),
                        error=f"poller crashed ({type(exc).__name__}: {exc}); restarting in {delay_s:.1f} s",
                        active_limit_a=queue.active_limit_a,
                    )
                )
                await restart.wait(stop)

    def _counting(self, slug: str) -> Publish:
        """Publish, remembering the charge point's last seq so a restarted loop continues it."""

        def publish(record: Record) -> None:
            self._seq[slug] = record["seq"]
            self.stats.records += 1
            self.stats.published += 1
            self.publish(record)

        return publish

    def _next_seq(self, slug: str) -> int:
        self._seq[slug] = self._seq.get(slug, 0) + 1
        return self._seq[slug]

    def _task_done(self, task: asyncio.Task) -> None:
        """Say at once when a charge point's supervisor itself died (its loop's crashes are handled inside)."""
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s died", task.get_name(), exc_info=task.exception())

    async def stop_all(self) -> None:
        for _config, _task, task_stop in self.tasks.values():
            task_stop.set()
        tasks = [task for _c, task, _s in self.tasks.values()] + list(self._retiring)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        left = sum(len(queue) for queue in self.queues.values())
        if left:
            # Not claimed, so not written: a redelivery after a restart may still execute them in time.
            logger.warning("stopped with %d command(s) still queued; not executed", left)
        self.queues.clear()
