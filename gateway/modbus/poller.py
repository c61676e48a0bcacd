"""The soft-PLC poll loop: every enabled charge point polled concurrently, decoded, published."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from gateway.choices import PollGroup
from gateway.conf import setting
from gateway.modbus.connection import ChargePointConnection, ConnectionFailed, ModbusError
from gateway.modbus.planner import ReadRequest, plan_reads
from gateway.profiles.codec import Value
from gateway.profiles.decode import decode_block, to_telemetry_fields
from gateway.profiles.encode import WriteRangeError, encode_for_write
from gateway.profiles.spec import ProfileSpec
from gateway.telemetry import Record, build_record

logger = logging.getLogger(__name__)

SLOW_GROUP_INTERVAL_S = 300.0
Publish = Callable[[Record], None]


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


def load_configs(site: str | None = None) -> list[ChargePointConfig]:
    """Read enabled charge points (optionally of one site) from the database."""
    from gateway.models import ChargePoint
    from gateway.profiles.store import load_spec

    close_old_connections()
    queryset = ChargePoint.objects.filter(enabled=True).select_related("site", "profile")
    if site:
        queryset = queryset.filter(site__slug=site)
    specs: dict[int, ProfileSpec] = {}
    configs = []
    for cp in queryset.prefetch_related("profile__registers", "profile__status_rules"):
        if cp.profile_id not in specs:
            specs[cp.profile_id] = load_spec(cp.profile)
        configs.append(
            ChargePointConfig(
                slug=cp.slug,
                site=cp.site.slug,
                host=cp.host,
                port=cp.port,
                unit_id=cp.unit_id,
                interval_ms=cp.poll_interval_ms,
                profile=specs[cp.profile_id],
            )
        )
    return configs


class ChargePointPoller:
    """Polls one charge point over its own persistent connection, with backoff when it is down."""

    def __init__(self, config: ChargePointConfig, publish: Publish) -> None:
        self.config = config
        self.publish = publish
        self.connection = ChargePointConnection(config.host, config.port, config.unit_id, setting("MODBUS_TIMEOUT_S"))
        self.fast_plan = plan_reads(config.profile, (PollGroup.FAST,))
        self.slow_plan = plan_reads(config.profile, (PollGroup.SLOW,))
        self.seq = 0
        self.failures = 0
        self.heartbeats_sent = 0
        self._slow_values: dict[str, Value] = {}
        self._last_values: dict[str, Value] = {}
        self._slow_read_at = -SLOW_GROUP_INTERVAL_S
        self._heartbeat_due: dict[str, float] = {}

    async def poll_once(self) -> Record:
        """Connect if needed, read, decode, publish one record (offline if unreachable)."""
        started = time.monotonic()
        try:
            await self.connection.ensure_connected()
            record = await self._read_record(started)
            await self._send_due_heartbeats(started)
        except ConnectionFailed as exc:
            self.failures += 1
            if self.failures == 1:
                logger.warning("%s offline: %s", self.config.slug, exc)
            record = self._record(None, error=str(exc))
        else:
            if self.failures:
                logger.info("%s back online after %d failed polls", self.config.slug, self.failures)
            self.failures = 0
        self.publish(record)
        return record

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at the configured interval until stop is set; the current poll always finishes.

        Heartbeats due between two polls are written on time, so a watchdog shorter than the
        poll interval (Schneider: 2 s) still holds.
        """
        interval_s = self.config.interval_ms / 1000
        next_poll_at = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() >= next_poll_at:
                    await self.poll_once()
                    next_poll_at = self._next_poll_at(next_poll_at, interval_s)
                elif self.connection.connected:
                    with contextlib.suppress(ConnectionFailed):  # the next poll reports it
                        await self._send_due_heartbeats(time.monotonic())
                wake_at = next_poll_at
                if self.connection.connected and self._heartbeat_due:
                    wake_at = min(wake_at, *self._heartbeat_due.values())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, wake_at - time.monotonic()))
        finally:
            await self.connection.close()

    def _next_poll_at(self, previous: float, interval_s: float) -> float:
        now = time.monotonic()
        if self.failures:
            return now + min(interval_s * 2**self.failures, setting("RECONNECT_BACKOFF_MAX_S"))
        # Fixed rate; a slow poll skips missed slots instead of bunching up.
        next_at = previous + interval_s
        if next_at < now:
            next_at = now + interval_s - ((now - next_at) % interval_s)
        return next_at

    async def _read_record(self, started: float) -> Record:
        decoded: dict[str, Value] = {}
        problems: list[str] = []
        plan: list[ReadRequest] = list(self.fast_plan)
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
                continue
            values, errors = decode_block(request.registers, request.address, words)
            decoded.update(values)
            problems += [f"{name}: {reason}" for name, reason in errors.items()]
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
        fields = to_telemetry_fields(self.config.profile, decoded)
        poll_ms = (time.monotonic() - started) * 1000
        return self._record(fields, error="; ".join(problems) or None, poll_ms=poll_ms)

    async def _send_due_heartbeats(self, now: float) -> None:
        """Watchdog writes the profile declares (e.g. a life bit), each at its own interval."""
        for heartbeat in self.config.profile.heartbeats:
            if now < self._heartbeat_due.get(heartbeat.register, 0.0):
                continue
            self._heartbeat_due[heartbeat.register] = now + heartbeat.interval_s
            value = heartbeat.value
            if heartbeat.value_from is not None:
                value = self._last_values.get(heartbeat.value_from)
                if value is None:
                    continue  # nothing read yet to write back
            register = self.config.profile.register(heartbeat.register)
            try:
                await self.connection.write_registers(
                    register.address, encode_for_write(register, value), register.unit_id
                )
            except ConnectionFailed:
                raise
            except (ModbusError, WriteRangeError) as exc:
                logger.warning("%s heartbeat %s failed: %s", self.config.slug, register.name, exc)
            else:
                self.heartbeats_sent += 1

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
        )


class Poller:
    """Keeps one ChargePointPoller task per enabled charge point, following the database."""

    def __init__(self, publish: Publish, *, site: str | None = None) -> None:
        self.publish = publish
        self.site = site
        self.tasks: dict[str, tuple[ChargePointConfig, asyncio.Task, asyncio.Event]] = {}
        self._retiring: set[asyncio.Task] = set()

    async def poll_all_once(self) -> list[Record]:
        """Poll every enabled charge point once, concurrently (manage.py runpoller --once)."""
        configs = await sync_to_async(load_configs)(self.site)
        pollers = [ChargePointPoller(config, self.publish) for config in configs]
        try:
            return list(await asyncio.gather(*(p.poll_once() for p in pollers)))
        finally:
            await asyncio.gather(*(p.connection.close() for p in pollers))

    async def run(self, stop: asyncio.Event) -> None:
        """Reload definitions every RELOAD_INTERVAL_S and reconcile the running loops."""
        reload_s = setting("RELOAD_INTERVAL_S")
        try:
            while not stop.is_set():
                try:
                    configs = await sync_to_async(load_configs)(self.site)
                except Exception:
                    # The database being briefly unavailable must not stop polling.
                    logger.exception("could not reload charge points; keeping the current set")
                else:
                    self.reconcile(configs)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), reload_s)
        finally:
            await self.stop_all()

    def reconcile(self, configs: list[ChargePointConfig]) -> None:
        """Start new charge points, stop removed or disabled ones, restart changed ones."""
        wanted = {config.slug: config for config in configs}
        for slug in list(self.tasks):
            config, task, task_stop = self.tasks[slug]
            if wanted.get(slug) != config:
                logger.info("stopping %s (%s)", slug, "changed" if slug in wanted else "removed or disabled")
                task_stop.set()
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
                del self.tasks[slug]
        for slug, config in wanted.items():
            if slug not in self.tasks:
                task_stop = asyncio.Event()
                poller = ChargePointPoller(config, self.publish)
                task = asyncio.create_task(poller.run(task_stop), name=f"poll:{slug}")
                self.tasks[slug] = (config, task, task_stop)
                logger.info(
                    "polling %s at %s:%d unit %d every %d ms (%s, %d reads)",
                    slug,
                    config.host,
                    config.port,
                    config.unit_id,
                    config.interval_ms,
                    config.profile.slug,
                    len(poller.fast_plan),
                )

    async def stop_all(self) -> None:
        for _config, _task, task_stop in self.tasks.values():
            task_stop.set()
        tasks = [task for _c, task, _s in self.tasks.values()] + list(self._retiring)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
