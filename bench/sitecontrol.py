"""Site load management: the controller's CPU per period, and its reaction to a load step.

- CPU per period (`cpu` rows): SiteController.run_round, the whole round a poller runs each
  period (the chargers' inputs from their latest records, allocate(), the commands, the
  SiteStatus and its JSON), in this process, on thread CPU time. Two layouts of one poller: one
  site of 100 chargers, and 50 sites of 20 (a period = one round of every site). The records
  change every period (currents wander, cars arrive and leave, ~10% of the chargers each period)
  so the rounds decide and send as in service; every command is answered as applied at once
  (the verification itself is the charge point's task, not the controller's). allocate() alone
  is timed too, to show where the time goes.
- Reaction (`reaction` rows): the real chain in one process: simulated chargers (generic
  profile, cars following a limit after 1.5 s) and a simulated Eastron SDM630 site meter on
  loopback, a Poller with its CommandRunner and the SiteControl exactly as runpoller wires them,
  an outbox publishing to Tansu. The building load steps up (a load that puts the site over its
  limit) and back down, again and again. Times are from the step to the results' completed_at
  (when the poller had the read-back): "cuts verified", every charger the step-up made go lower
  has its first lower limit verified (the urgent round); "settled", every charger whose limit the
  step changed holds its final one verified (later rounds' adjustments, resume votes and ramps
  included: by design periods, not milliseconds). Also the worst overshoot seen at the meter:
  ∫ max(0, draw − limit) dt over each step-up, in A·s, and how long the site stayed over.

    .venv/bin/python bench/sitecontrol.py [--quick]
"""

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/sitecontrol.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

TITLE = "Site load management: controller CPU per period, reaction to a load step"


def setup_django(var_dir: Path, bootstrap: str) -> None:
    env = common.embedded_env(var_dir, KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_ENABLE_IDEMPOTENCE="0")
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# --- CPU per period ------------------------------------------------------------------------------


def synthetic_config(site: str, chargers: int, rng: random.Random):
    from gateway.sitecontrol.config import ChargerConfig, SiteControlConfig

    wirings = ("L123",) * 8 + ("L1", "L2")
    return SiteControlConfig(
        site=site,
        site_id=0,
        # Binding: about two thirds of what the cars would draw at full speed.
        limit_a=max(63.0, round(chargers * 16 * 0.66)),
        period_s=5.0,
        margin_a=1.0,
        base_load_a=10.0,
        failsafe_timeout_s=30,
        chargers=tuple(
            ChargerConfig(
                slug=f"{site}-cp{n:03d}",
                wiring=wirings[n % len(wirings)],
                priority=rng.choice((0, 0, 0, 1, 2)),
                min_a=6.0,
                max_a=32.0,
                profile="generic-ev-charger",
                can_limit=True,
                can_pause=True,
                resume_first=False,
                failsafe_current=True,
                failsafe_timeout_s=30,
            )
            for n in range(chargers)
        ),
    )


class SyntheticSite:
    """One site's controller fed synthetic records; its commands answered as applied at once."""

    def __init__(self, config, rng: random.Random) -> None:
        from gateway.sitecontrol.controller import SiteController

        self.rng = rng
        self.now_s = 0.0
        self.sent = []
        self.controller = SiteController(config, self.sent.append, lambda status: status.to_json(), self.clock)
        self.cars = {c.slug: rng.random() < 0.8 for c in config.chargers}
        self.limits = {c.slug: 32.0 for c in config.chargers}
        self.statuses = 0

    def clock(self) -> float:
        return self.now_s

    def feed_records(self) -> None:
        from gateway.commands.messages import CommandResult

        for charger in self.controller.config.chargers:
            slug = charger.slug
            if self.rng.random() < 0.05:
                self.cars[slug] = not self.cars[slug]  # a car arrives or leaves
            limit = self.limits[slug]
            charging = self.cars[slug] and limit >= 6
            current = min(limit, 16.0) - self.rng.uniform(0.1, 0.8) if charging else 0.0
            currents = (current, current, current) if charger.wiring == "L123" else (current, 0.0, 0.0)
            status = "charging" if charging else ("suspended" if self.cars[slug] else "available")
            self.controller.on_record(
                {
                    "charge_point": slug,
                    "status": status,
                    "values": {"current_l1_a": currents[0], "current_l2_a": currents[1], "current_l3_a": currents[2]},
                }
            )
        for command in self.sent:
            if command.action == "set_current_limit":
                self.limits[command.charge_point] = command.value
            elif command.action == "pause":
                self.limits[command.charge_point] = 0.0
            self.controller.on_result(CommandResult.applied(command, command.value, poller="bench"))
        self.sent.clear()

    def round(self) -> None:
        self.now_s += self.controller.config.period_s
        self.feed_records()
        self.controller.run_round()


def bench_cpu(layout: str, sites: int, chargers: int, periods: int) -> dict:
    from gateway.sitecontrol import allocate as allocation

    rng = random.Random(12)
    fleet = [SyntheticSite(synthetic_config(f"s{n:02d}", chargers, rng), rng) for n in range(sites)]
    for _ in range(5):  # warm-up: the failsafe set-up and the first ramps
        for site in fleet:
            site.round()
    per_period, allocate_s = [], 0.0
    original = allocation.allocate

    def timed_allocate(*args, **kwargs):
        nonlocal allocate_s
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            allocate_s += time.thread_time() - started

    allocation.allocate = timed_allocate
    commands = 0
    try:
        for _ in range(periods):
            spent = 0.0
            for site in fleet:
                site.now_s += site.controller.config.period_s
                site.feed_records()  # the test's own work: not counted
                started = time.thread_time()
                site.controller.run_round()
                spent += time.thread_time() - started
                commands += len(site.sent)
            per_period.append(spent)
    finally:
        allocation.allocate = original
    cuts = common.percentiles([s * 1000 for s in per_period])
    return {
        "layout": layout,
        "chargers": sites * chargers,
        "periods": periods,
        "ms CPU per period p50": round(cuts["p50"], 2),
        "p99": round(cuts["p99"], 2),
        "mean": round(statistics.fmean(per_period) * 1000, 2),
        "of it allocate()": round(allocate_s / periods * 1000, 2),
        "% of one core at 5 s": round(statistics.fmean(per_period) / 5.0 * 100, 3),
        "commands per period": round(commands / periods, 1),
    }


# --- reaction to a load step ---------------------------------------------------------------------

LIMIT_A = 63.0
PERIOD_S = 5.0
LOW_A, HIGH_A = 5.0, 35.0  # the building load before and after a step (per phase)
WIRING = ["L123"] * 6 + ["L1", "L2", "L3", "L2"]
PRIORITIES = [5, 5, 3, 3, 1, 0, 2, 2, 0, 0]


def create_site(fleet) -> None:
    from gateway.models import ChargePoint, DeviceProfile, Site
    from gateway.profiles.store import SITE_METER_PROFILE

    Site.objects.filter(slug="bench-site").delete()
    site = Site.objects.create(
        slug="bench-site",
        name="Bench site",
        limit_a=LIMIT_A,
        margin_a=1.0,
        base_load_a=10.0,
        control_period_s=PERIOD_S,
        meter_profile=DeviceProfile.objects.get(slug=SITE_METER_PROFILE),
        meter_host="127.0.0.1",
        meter_port=fleet.meter.port,
    )
    generic = DeviceProfile.objects.get(slug="generic-ev-charger")
    for index, sim in enumerate(fleet.charge_points):
        ChargePoint.objects.create(
            slug=f"bench-cp-{index}",
            name=f"Bench CP {index}",
            site=site,
            host="127.0.0.1",
            port=sim.port,
            unit_id=sim.unit_id,
            profile=generic,
            poll_interval_ms=1000,
            priority=PRIORITIES[index],
            wiring=WIRING[index],
        )


async def sample(fleet, samples: list, stop) -> None:
    import asyncio

    while not stop.is_set():
        samples.append(
            (time.monotonic(), fleet.site.phase_currents_a(), [s.behaviour.max_current_a for s in fleet.charge_points])
        )
        await asyncio.sleep(0.1)


async def quiet(samples: list, quiet_s: float, min_s: float, timeout_s: float = 120.0) -> None:
    """Until no charger's limit changed for quiet_s (and at least min_s passed)."""
    import asyncio

    since = time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        recent = [s for s in samples if s[0] >= now - quiet_s]
        if now - since >= min_s and recent and all(s[2] == recent[-1][2] for s in recent):
            return
        if now - since > timeout_s:
            raise TimeoutError("the limits did not settle")


async def reaction_steps(pairs: int) -> dict:
    import asyncio
    from datetime import UTC, datetime

    from asgiref.sync import sync_to_async
    from django.conf import settings

    from gateway import services
    from gateway.commands.messages import CommandResult
    from gateway.kafka.topics import command_results_topic
    from gateway.profiles.store import SHIPPED_DIR, SITE_METER_PROFILE, read_spec_file, shipped_spec
    from gateway.simulator.fleet import SimulatorFleet
    from gateway.simulator.site import SiteModel, SiteScript

    settings.EVDASH["RELOAD_INTERVAL_S"] = 1.0
    fleet = SimulatorFleet(
        read_spec_file(SHIPPED_DIR / "generic-ev-charger.json"),
        10,
        base_port=0,
        seed=7,
        scripted=True,
        response_delay_s=1.5,
    )
    model = SiteModel.flat(LOW_A)
    fleet.attach_site(model, wiring=WIRING, meter_profile=shipped_spec(SITE_METER_PROFILE))
    script = SiteScript()
    for index, wiring in enumerate(WIRING):
        script.arrive(0.0, index, phases=3 if wiring == "L123" else 1, max_current_a=32.0)
    model.run(script)
    samples: list = []
    steps: list[tuple[str, float, datetime]] = []  # (direction, monotonic, wall clock)
    async with fleet:
        await sync_to_async(create_site)(fleet)
        stop_poller, stop_sampling = asyncio.Event(), asyncio.Event()
        sampler = asyncio.create_task(sample(fleet, samples, stop_sampling))
        poller = asyncio.create_task(services.run_poller(stop_poller, poller_id="bench-site"))
        try:
            await quiet(samples, 2 * PERIOD_S, 6 * PERIOD_S)
            for _ in range(pairs):
                for direction, level in (("up", HIGH_A), ("down", LOW_A)):
                    steps.append((direction, time.monotonic(), datetime.now(UTC)))
                    model.step(level_a=level)
                    await quiet(samples, 2 * PERIOD_S, 4 * PERIOD_S)
        finally:
            stop_poller.set()
            stop_sampling.set()
            await asyncio.gather(poller, sampler, return_exceptions=True)
    # The controller's results, as the poller published them (completed_at: when each was verified).
    from aiokafka import AIOKafkaConsumer

    from gateway.kafka.config import client_options

    consumer = AIOKafkaConsumer(command_results_topic(), auto_offset_reset="earliest", **client_options())
    await consumer.start()
    results: list[CommandResult] = []
    try:
        while batch := await consumer.getmany(timeout_ms=2000):
            for messages in batch.values():
                results += [CommandResult.from_json(m.value) for m in messages]
    finally:
        await consumer.stop()
    controller = [r for r in results if r.user.startswith("controller:") and r.status == "applied"]
    limit_actions = ("set_current_limit", "pause", "resume")
    reactions: dict[str, list[float]] = {"up": [], "down": []}
    cuts, overshoots, over_s = [], [], []
    for index, (direction, mono, wall) in enumerate(steps):
        end_mono = steps[index + 1][1] if index + 1 < len(steps) else samples[-1][0]
        end_wall = steps[index + 1][2] if index + 1 < len(steps) else datetime.now(UTC)
        before = next(s[2] for s in reversed(samples) if s[0] <= mono)
        after = next(s[2] for s in reversed(samples) if s[0] < end_mono)
        mine = sorted(
            (r for r in controller if wall <= r.completed_at < end_wall and r.action in limit_actions),
            key=lambda r: r.completed_at,
        )
        # Settled: each charger whose limit the step changed holds its final one, verified.
        settled_at = []
        for n, (old, new) in enumerate(zip(before, after, strict=True)):
            if old != new:
                slug = f"bench-cp-{n}"
                done = [r.completed_at for r in mine if r.charge_point == slug]
                if done:
                    settled_at.append(max(done))
        if settled_at:
            reactions[direction].append((max(settled_at) - wall).total_seconds())
        if direction == "up":
            # Cut: every charger the step made go lower has its first lower limit verified.
            first_cuts = []
            for n, old in enumerate(before):
                slug = f"bench-cp-{n}"
                lower = [
                    r.completed_at
                    for r in mine
                    if r.charge_point == slug and (r.action == "pause" or (r.value is not None and r.value < old))
                ]
                if lower:
                    first_cuts.append(min(lower))
            if first_cuts:
                cuts.append((max(first_cuts) - wall).total_seconds())
            window = [s for s in samples if mono <= s[0] < mono + 3 * PERIOD_S]
            overshoots.append(sum(max(0.0, max(s[1]) - LIMIT_A) * 0.1 for s in window))
            over = [s[0] - mono for s in window if max(s[1]) > LIMIT_A]
            over_s.append(max(over) if over else 0.0)
    up = common.percentiles(reactions["up"])
    down = common.percentiles(reactions["down"])
    cut = common.percentiles(cuts)
    return {
        "steps": f"{len(reactions['up'])} up, {len(reactions['down'])} down",
        "up: cuts verified p50 s": round(cut["p50"], 2),
        "p99 s": round(cut["p99"], 2),
        "up: all settled p50 s": round(up["p50"], 1),
        "p99 s ": round(up["p99"], 1),
        "down (ramp): settled p50 s": round(down["p50"], 1),
        "p99 s  ": round(down["p99"], 1),
        "worst overshoot A·s": round(max(overshoots), 1),
        "longest over limit s": round(max(over_s), 2),
    }


def bench_reaction(pairs: int) -> dict:
    import asyncio

    return asyncio.run(reaction_steps(pairs))


def run(quick: bool) -> list[dict]:
    rows: list[dict] = []
    with common.scratch_var_dir("evdash-bench-site-") as var_dir, common.tansu(log_dir=var_dir) as (_broker, bootstrap):
        setup_django(var_dir, bootstrap)
        periods = 60 if quick else 300
        rows.append({"measure": "cpu"} | bench_cpu("1 site of 100", 1, 100, periods))
        rows.append({"measure": "cpu"} | bench_cpu("50 sites of 20", 50, 20, periods))
        rows.append(
            {"measure": "reaction", "layout": "10 chargers, 63 A, 5 <-> 35 A"} | bench_reaction(2 if quick else 4)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    args = parser.parse_args()
    common.print_rows(TITLE, run(args.quick))


if __name__ == "__main__":
    main()
