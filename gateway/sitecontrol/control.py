"""All the site controllers of one poller: one SiteController per load-managed site whose chargers
this poller polls, following the database (every RELOAD_INTERVAL_S: config, overrides, the lease).

The poller's seams: `tap(publish)` wraps the poller's publish so every record reaches its site's
controller; `on_result` is one of CommandRunner.result_listeners; commands go out through the
runner's deliver(). A site whose lease another poller holds is refused: an ERROR naming that
poller and host, and a SiteStatus with state "refused", while this poller keeps polling.
"""

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from asgiref.sync import sync_to_async

from gateway.commands.messages import CommandResult
from gateway.conf import setting
from gateway.runtime import Backoff, wait_unless_stopped
from gateway.sitecontrol.config import SiteControlConfig, load_site_controls
from gateway.sitecontrol.controller import Clock, ControllerCounters, Deliver, PublishStatus, SiteController
from gateway.sitecontrol.lease import LeaseOutcome, release_lease, take_lease
from gateway.sitecontrol.messages import SiteStatus
from gateway.telemetry import Record

logger = logging.getLogger(__name__)

Publish = Callable[[Record], None]
FIRST_LOAD_CHECK_S = 0.05  # how often the first reload looks whether the poller has loaded its charge points
CONTROLLER_RESTART_MAX_S = 30.0


class SiteControl:
    """The poller's site controllers. `polled()` names the charge points the poller polls now."""

    def __init__(
        self,
        *,
        poller_id: str,
        deliver: Deliver,
        publish_status: PublishStatus,
        polled: Callable[[], set[str]],
        site: str | None = None,
        clock: Clock = time.monotonic,
        host: str | None = None,
        pid: int | None = None,
        controller_factory: Callable[..., SiteController] = SiteController,
    ) -> None:
        self.poller_id = poller_id
        self.deliver = deliver
        self.publish_status = publish_status
        self.polled = polled
        self.site = site
        self.clock = clock
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.controller_factory = controller_factory
        self.controllers: dict[str, SiteController] = {}
        self.refused: dict[str, LeaseOutcome] = {}
        self.reloads = 0
        self.record_errors = 0
        self._tasks: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}
        self._site_ids: dict[str, int] = {}
        self._retired: list[ControllerCounters] = []  # stopped controllers' counters: the totals never go back

    # --- the poller's seams ------------------------------------------------------------------
    def tap(self, publish: Publish) -> Publish:
        """The poller's publish, also showing every record to its site's controller."""

        def tapped(record: Record) -> None:
            publish(record)
            controller = self.controllers.get(record.get("site", ""))
            if controller is not None:
                try:
                    controller.on_record(record)
                except Exception:
                    # Never the poll loop's problem: it would restart the charge point's loop.
                    self.record_errors += 1
                    logger.exception("%s: the controller could not take a record", record.get("site"))

        return tapped

    def on_result(self, result: CommandResult) -> None:
        """A command result (CommandRunner.result_listeners): to its site's controller."""
        controller = self.controllers.get(result.site)
        if controller is not None:
            controller.on_result(result)

    @property
    def counters(self) -> dict[str, float]:
        """Totals over this poller's controllers (the bench and the metrics read them)."""
        commands: Counter[str] = Counter()
        totals = {"sites": len(self.controllers), "refused": len(self.refused), "periods": 0, "urgent": 0, "errors": 0}
        last_period_s = 0.0
        for counters in [c.counters for c in self.controllers.values()] + self._retired:
            totals["periods"] += counters.periods
            totals["urgent"] += counters.urgent
            totals["errors"] += counters.errors
            commands.update(counters.commands)
            last_period_s = max(last_period_s, counters.last_period_s)
        return totals | {"last_period_s": last_period_s} | {f"commands_{k}": v for k, v in commands.items()}

    # --- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Follow the database until stop is set; then stop every controller and give the leases up."""
        reload_s = setting("RELOAD_INTERVAL_S")
        # The first reload once the poller knows its charge points (else there is nothing to control yet).
        waited_until = self.clock() + reload_s
        while not self.polled() and self.clock() < waited_until:
            if await wait_unless_stopped(stop, FIRST_LOAD_CHECK_S):
                return
        reload_at = self.clock()
        try:
            while not stop.is_set():
                try:
                    await self.reload(stop)
                except Exception:
                    logger.exception("site control: could not reload the sites; the controllers keep running")
                reload_at = max(reload_at + reload_s, self.clock())
                await wait_unless_stopped(stop, reload_at - self.clock())
        finally:
            await self._stop_all()

    async def reload(self, stop: asyncio.Event) -> None:
        """Read the sites, take or renew their leases, start, update or stop controllers."""
        configs = await sync_to_async(load_site_controls)(self.site, set(self.polled()))
        self.reloads += 1
        wanted = {config.site: config for config in configs}
        for site in list(self._tasks):
            if site not in wanted:
                logger.info("site control: %s is no longer load-managed here; its controller stops", site)
                await self._stop(site, release=True)
        for site in list(self.refused):
            if site not in wanted:
                del self.refused[site]
        for config in configs:
            self._site_ids[config.site] = config.site_id
            try:
                outcome = await sync_to_async(take_lease)(
                    config.site_id, config.site, self.poller_id, self.host, self.pid, config.period_s
                )
            except Exception:
                logger.exception("%s: could not renew the site's lease; control goes on as it was", config.site)
                continue
            if outcome.taken:
                self._controlled(config, outcome, stop)
            else:
                await self._refuse(config, outcome)

    def _controlled(self, config: SiteControlConfig, outcome: LeaseOutcome, stop: asyncio.Event) -> None:
        if outcome.took_over:
            logger.warning(
                "%s: took over control from poller %s (its lease had lapsed)", config.site, outcome.took_over
            )
        if config.site in self.refused:
            logger.info("%s: the other poller's lease has lapsed; this poller controls the site now", config.site)
            del self.refused[config.site]
        controller = self.controllers.get(config.site)
        if controller is not None:
            controller.update(config)
            return
        controller = self.controller_factory(
            config, self.deliver, self.publish_status, self.clock, poller_id=self.poller_id
        )
        self.controllers[config.site] = controller
        own_stop = asyncio.Event()
        task = asyncio.create_task(self._supervise(controller, own_stop, stop), name=f"site-control:{config.site}")
        self._tasks[config.site] = (task, own_stop)
        logger.info(
            "%s: controlling %d charger(s) at %g A per phase every %g s (%s)",
            config.site,
            len(config.chargers),
            config.limit_a,
            config.period_s,
            "meter" if config.meter is not None else f"no meter: chargers + {config.base_load_a:g} A base load",
        )

    async def _refuse(self, config: SiteControlConfig, outcome: LeaseOutcome) -> None:
        if config.site in self._tasks:
            logger.error(
                "%s: poller %s on %s took the site's lease; this poller stops controlling it",
                config.site,
                outcome.holder,
                outcome.host,
            )
            await self._stop(config.site, release=False)
        known = self.refused.get(config.site)
        if known is None or known.holder != outcome.holder:
            logger.error("%s: load management refused: %s", config.site, outcome.refusal)
        self.refused[config.site] = outcome
        zero = (0.0, 0.0, 0.0)
        status = SiteStatus(
            site=config.site,
            at=datetime.now(UTC),
            poller=self.poller_id,
            state="refused",
            reason=outcome.refusal,
            limit_a=config.limit_a,
            limit_kw=config.limit_kw,
            margin_a=config.margin_a,
            draw_a=zero,
            draw_source="estimate",
            base_load_a=zero,
            allocated_a=zero,
        )
        try:
            self.publish_status(status)
        except Exception:
            logger.exception("%s: could not publish the refused status", config.site)

    async def _supervise(self, controller: SiteController, own_stop: asyncio.Event, stop: asyncio.Event) -> None:
        """Run a controller until its stop or the poller's; restarted (with backoff) if its loop dies."""
        restart = Backoff(first_s=1.0, max_s=CONTROLLER_RESTART_MAX_S)
        relay = asyncio.create_task(_relay(stop, own_stop))
        try:
            while not own_stop.is_set():
                try:
                    await controller.run(own_stop)
                    return
                except Exception:
                    logger.exception(
                        "%s: the controller's loop failed; restarting in %.1f s",
                        controller.config.site,
                        restart.peek_s(),
                    )
                    await restart.wait(own_stop)
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)

    async def _stop(self, site: str, *, release: bool) -> None:
        task, own_stop = self._tasks.pop(site)
        own_stop.set()
        await asyncio.gather(task, return_exceptions=True)
        controller = self.controllers.pop(site, None)
        if controller is not None:
            self._retired.append(controller.counters)
        if release:
            await self._release(site)

    async def _release(self, site: str) -> None:
        try:
            await sync_to_async(release_lease)(self._site_ids[site], self.poller_id)
        except Exception:
            logger.exception("%s: could not give the lease up; it lapses by itself", site)

    async def _stop_all(self) -> None:
        for site in list(self._tasks):
            await self._stop(site, release=True)


async def _relay(stop: asyncio.Event, own_stop: asyncio.Event) -> None:
    """Set own_stop when stop is set (the poller stopping stops every controller)."""
    await stop.wait()
    own_stop.set()
