"""The embedded demo: brokers, simulated fleet, poller, bridge, consumer and web server from one command.

By default the demo runs the edge path, as a site would: poller -> MQTT broker (amqtt, embedded)
-> runbridge -> Kafka (Tansu, embedded) -> consumer. EVDASH_DEMO_DIRECT=1 runs the direct path
instead: poller -> Kafka, no MQTT broker, no bridge.

Why one web process hosts the consumer: the embedded mode has no Redis, and the in-memory channel
layer only reaches WebSockets of its own process. So the Kafka consumer runs as a task inside the
daphne process; the brokers, simulator, poller and bridge run as child processes exactly as in
production.
"""

import asyncio
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from gateway.choices import Wiring
from gateway.conf import setting
from gateway.kafka.embedded import EmbeddedBrokerError, start_broker, stop_broker
from gateway.modbus.pacing import fitting_interval_ms
from gateway.models import ChargePoint, DeviceProfile, Site
from gateway.mqtt.embedded import DEFAULT_PORT as DEFAULT_MQTT_PORT
from gateway.mqtt.embedded import start_mqtt_broker
from gateway.mqtt.topics import telemetry_subscription
from gateway.profiles.store import load_spec
from gateway.runtime import die_with_parent

logger = logging.getLogger(__name__)

DEMO_SITE = "demo-site"
# The demo fleet cycles through the shipped real chargers, then the generic reference map.
DEMO_PROFILES = (
    "alfen-eve",
    "abb-terra-ac",
    "keba-p30",
    "webasto-next",
    "vestel-evc04",
    "schneider-evlink-pro-ac",
    "mennekes-amtron-hcc3",
    "generic-ev-charger",
)
# The simulator: small fleets are served by pymodbus, the server the profiles are tested against;
# above LEAN_SIMULATOR_ABOVE charge points by the lean server (`simulate --lean`), since pymodbus'
# ~240 µs of CPU per read would take most of a core at 1,000 charge points and starve the rest of
# the demo. One lean process serves ~10,000 reads/s; a charge point costs 1 to 4 reads a second.
LEAN_SIMULATOR_ABOVE = 100
# The demo's simulated day runs compressed (gateway/simulator/behaviour.py, session_scale): within
# two minutes an operator sees sessions finish, with their energy, and faults raise and clear alerts.
DEMO_SESSION_SCALE = 0.01
CHARGE_POINTS_PER_SIMULATOR_PROCESS = 2500
MAX_CHARGE_POINTS = 10_000
MAX_PORT = 65535

# Site load management (README, "Site load management"): the demo site shares a connection limit
# that binds when the car park is busy in the building's afternoon peak, and idles at night.
# The simulator serves the site meter on the port after the charge points' (one simulator
# process only: the meter sums every charger).
DEMO_METER_PROFILE = "eastron-sdm630"
DEMO_BUILDING_LOAD_A = 24.0  # the building's own afternoon peak per phase (`simulate --building-load-a`)
DEMO_SHARE_PER_CHARGER_A = 5.0  # of the limit, per charge point: a busy car park (~40 % charging at 16-32 A) exceeds it
DEMO_MIN_LIMIT_A = 40.0  # a lone charger is never squeezed below its minimum by the building
# Every third charger single-phase, on L1, L2, L3 in turn (the simulator cycles the same list).
DEMO_WIRING = ("L123", "L123", "L1", "L123", "L123", "L2", "L123", "L123", "L3")
# Every fourth charger is a fleet vehicle's bay: it keeps charging when others pause.
DEMO_FLEET_BAY_PRIORITY, DEMO_PRIORITY = 80, 40


def demo_site_limit_a(count: int) -> float:
    """A limit (A per phase, a multiple of 5) that binds at busy times for a fleet of `count`."""
    return max(DEMO_MIN_LIMIT_A, 5.0 * round((DEMO_BUILDING_LOAD_A + DEMO_SHARE_PER_CHARGER_A * count) / 5.0))


def demo_wiring(index: int) -> str:
    return DEMO_WIRING[index % len(DEMO_WIRING)]


def demo_meter_port(count: int, base_port: int) -> int | None:
    """The site meter's port, or None when the fleet spans several simulator processes."""
    return base_port + count if count <= CHARGE_POINTS_PER_SIMULATOR_PROCESS else None


DIRECT_VARIABLE = "EVDASH_DEMO_DIRECT"


@dataclass
class DemoOptions:
    charge_points: int
    http_host: str
    http_port: int
    kafka_port: int
    modbus_base_port: int
    speedup: float
    seed: int | None
    session_scale: float = 1.0  # ChargePointBehaviour.session_scale; `manage.py demo` defaults to DEMO_SESSION_SCALE
    mqtt_port: int = DEFAULT_MQTT_PORT
    direct: bool = False  # poller -> Kafka, without the MQTT broker and the bridge
    metrics_port: int | None = None  # the poller's --metrics-port; the bridge's is +1, the consumer's +2

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def metrics_ports(self) -> dict[str, int]:
        """Each worker's /metrics port (README, Integrations); none unless --metrics-port."""
        if self.metrics_port is None:
            return {}
        ports = {"poller": self.metrics_port, "consumer": self.metrics_port + 2}
        if not self.direct:
            ports["bridge"] = self.metrics_port + 1
        return ports

    def describe_path(self) -> str:
        """One line for the banner: which path the records take."""
        if self.direct:
            return f"direct: poller -> Kafka ({DIRECT_VARIABLE}=1)"
        return f"edge: poller -> MQTT {self.mqtt_url} -> bridge -> Kafka"


# amqtt, pure Python, costs about 0.2 ms of CPU per record (5,000 QoS 1 records, publisher to
# subscriber, in 2.3 s): a fleet above this size would give it most of a core.
EDGE_PATH_COMFORTABLE_UP_TO = 1000
AMQTT_CPU_S_PER_RECORD = 0.0002


def edge_path_warning(options: DemoOptions) -> str | None:
    """A line for the operator when the fleet is too large for the embedded MQTT broker."""
    if options.direct or options.charge_points <= EDGE_PATH_COMFORTABLE_UP_TO:
        return None
    share = options.charge_points * AMQTT_CPU_S_PER_RECORD  # about a record per charge point a second
    return (
        f"{options.charge_points:,} charge points through the embedded MQTT broker (amqtt) cost about "
        f"{share:.0%} of a core; for a large fleet set {DIRECT_VARIABLE}=1 (the direct path)"
    )


def direct_path_requested() -> bool:
    """EVDASH_DEMO_DIRECT=1 (or true/yes): the demo skips MQTT, as a direct deployment would."""
    return os.environ.get(DIRECT_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def check_fleet_size(count: int, base_port: int) -> None:
    """CommandError unless `count` charge points fit the demo and the ports from `base_port`."""
    if not 1 <= count <= MAX_CHARGE_POINTS:
        raise CommandError(f"--charge-points must be between 1 and {MAX_CHARGE_POINTS:,}.")
    if not 1 <= base_port <= MAX_PORT - count + 1:
        raise CommandError(f"Modbus ports {base_port}..{base_port + count - 1} are not all in 1..{MAX_PORT}.")
    meter_port = demo_meter_port(count, base_port)
    if meter_port is not None and meter_port > MAX_PORT:
        raise CommandError(f"The site meter's Modbus port {meter_port} (after the charge points') is above {MAX_PORT}.")


def simulator_args(options: DemoOptions, profile_slugs: list[str], meter_profile: str | None = None) -> list[str]:
    """`manage.py simulate` arguments serving the demo fleet (lean and in several processes when large),
    with the site meter (`meter_profile`) on the port after the charge points' when one process serves them."""
    count = options.charge_points
    args = ["simulate", "--count", str(count), "--base-port", str(options.modbus_base_port)]
    args += ["--speedup", str(options.speedup), "--profiles", ",".join(profile_slugs)]
    args += ["--session-scale", str(options.session_scale)]
    if options.seed is not None:
        args += ["--seed", str(options.seed)]
    if count > LEAN_SIMULATOR_ABOVE:
        processes = min(os.cpu_count() or 1, math.ceil(count / CHARGE_POINTS_PER_SIMULATOR_PROCESS))
        args += ["--lean", "--processes", str(processes)]
    meter_port = demo_meter_port(count, options.modbus_base_port)
    if meter_port is not None:  # one simulator process: the site, its wiring, and its meter if there is a profile
        args += ["--wiring", ",".join(DEMO_WIRING), "--building-load-a", str(DEMO_BUILDING_LOAD_A)]
        if meter_profile is not None:
            args += ["--site-meter-port", str(meter_port), "--site-meter-profile", meter_profile]
    return args


def demo_profiles() -> list[DeviceProfile]:
    """The profiles of the demo fleet, in the order the simulator cycles through them."""
    by_slug = DeviceProfile.objects.in_bulk(DEMO_PROFILES, field_name="slug")
    return [by_slug[slug] for slug in DEMO_PROFILES if slug in by_slug]


def demo_profile_slugs() -> list[str]:
    return [profile.slug for profile in demo_profiles()]


def demo_meter_profile() -> DeviceProfile | None:
    """The site meter's profile, if the database has it (migrations ship it)."""
    return DeviceProfile.objects.filter(slug=DEMO_METER_PROFILE).first()


def configure_demo_site(site: Site, count: int, base_port: int) -> None:
    """Give the demo site its limit (if it has none: an operator's edit is kept) and its meter.

    The meter follows the simulator like the charge points' endpoints do; without the meter's
    profile, or for a fleet spread over several simulator processes, the controller estimates the
    draw from the chargers plus the building's typical load.
    """
    meter = demo_meter_profile()
    meter_port = demo_meter_port(count, base_port)
    if site.limit_a is None:
        site.limit_a = demo_site_limit_a(count)
    if meter is not None and meter_port is not None:
        site.meter_profile, site.meter_host, site.meter_port = meter, "127.0.0.1", meter_port
        site.meter_unit_id = meter.default_unit_id
    else:
        site.meter_profile, site.meter_host = None, ""
        site.base_load_a = min(DEMO_BUILDING_LOAD_A * 0.6, site.limit_a / 2)
    site.full_clean()
    site.save()


def describe_site(options: DemoOptions) -> str:
    """One line for the banner: the site page, its limit and where its draw comes from."""
    site = Site.objects.select_related("meter_profile").get(slug=DEMO_SITE)
    url = f"http://{options.http_host}:{options.http_port}/sites/{site.slug}/"
    if site.limit_a is None:
        return f"site: {url} (no load management: the site has no limit)"
    if site.meter_profile is not None:
        measured = f"meter {site.meter_profile.slug} on {site.meter_host}:{site.meter_port}"
    else:
        measured = f"no meter: chargers + {site.base_load_a:g} A base load"
    return f"site load management: {url} (limit {site.limit_a:g} A per phase, {measured})"


def ensure_demo_fleet(count: int, base_port: int) -> int:
    """Create or realign the demo charge points cp-01..cp-N with what the simulator serves.

    Endpoint and profile follow the simulator (charge point i serves profile i mod n on
    base_port + i); names, poll intervals and enabled flags edited in the admin are kept, except
    a poll interval too short for the charger's pacing (KEBA), which is lengthened to fit.
    In bulk, with each profile read once: a demo of thousands of charge points starts in seconds.
    """
    profiles = demo_profiles()
    specs = {profile.pk: load_spec(profile) for profile in profiles}
    slugs = [f"cp-{index + 1:02d}" for index in range(count)]
    endpoint_fields = ["host", "port", "unit_id", "profile", "wiring"]
    compared = ("host", "port", "unit_id", "profile_id", "poll_interval_ms", "wiring")
    one_simulator = demo_meter_port(count, base_port) is not None  # only it applies the wiring
    new: list[ChargePoint] = []
    changed: list[ChargePoint] = []
    with transaction.atomic():
        site, _ = Site.objects.get_or_create(slug=DEMO_SITE, defaults={"name": "Demo car park"})
        configure_demo_site(site, count, base_port)
        existing = ChargePoint.objects.in_bulk(slugs, field_name="slug")
        for index, slug in enumerate(slugs):
            profile = profiles[index % len(profiles)]
            endpoint = {"host": "127.0.0.1", "port": base_port + index, "unit_id": profile.default_unit_id}
            cp = existing.get(slug)
            # The wiring is the simulator's, like the endpoint; the priority is the operator's once set.
            endpoint["wiring"] = demo_wiring(index) if one_simulator else Wiring.THREE_PHASE.value
            if cp is None:
                name = f"{profile.vendor or 'Generic'} {index + 1:02d}".replace("evdash", "Generic")
                priority = DEMO_FLEET_BAY_PRIORITY if index % 4 == 0 else DEMO_PRIORITY
                cp = ChargePoint(slug=slug, name=name, site=site, profile=profile, priority=priority, **endpoint)
                new.append(cp)
            before = [getattr(cp, field) for field in compared]
            for field, value in endpoint.items():
                setattr(cp, field, value)
            cp.profile = profile
            spec = specs[profile.pk]
            # A paced charger (KEBA: 0.5 s a read) cannot be polled every second.
            cp.poll_interval_ms = fitting_interval_ms(spec, cp.effective_pacing(spec), cp.poll_interval_ms)
            after = [getattr(cp, field) for field in compared]
            if slug in existing and after != before:
                cp.updated_at = timezone.now()  # bulk_update skips auto_now; the poller's reload reads it
                changed.append(cp)
        # Two steps: the unique endpoint (host, port, unit id) is checked row by row, so charge points
        # moving onto each other's ports (another --modbus-base-port) would collide midway.
        targets = [cp.host for cp in changed]
        for cp in changed:
            cp.host = f"moving-{cp.pk}.invalid"
        ChargePoint.objects.bulk_update(changed, ["host"], batch_size=500)
        for cp, host in zip(changed, targets, strict=True):
            cp.host = host
        ChargePoint.objects.bulk_update(changed, [*endpoint_fields, "poll_interval_ms", "updated_at"], batch_size=500)
        ChargePoint.objects.bulk_create(new, batch_size=500)
    return len(new)


def ensure_admin(password: str | None) -> tuple[str | None, bool]:
    """Create the `admin` superuser; returns (password to show or None if unchanged, created)."""
    user_model = get_user_model()
    user = user_model.objects.filter(username="admin").first()
    if user is not None and not password:
        return None, False
    password = password or secrets.token_urlsafe(12)
    if user is None:
        user_model.objects.create_superuser("admin", "admin@localhost", password)
        return password, True
    user.set_password(password)
    user.save(update_fields=["password"])
    return password, False


ADMIN_PASSWORD_VARIABLE = "EVDASH_ADMIN_PASSWORD"  # noqa: S105 (a variable name, not a password)


def take_admin_password() -> str | None:
    """Read the demo's admin password and remove it from this process's environment.

    No child needs it, and every child (broker, simulator, poller) inherits this environment: a
    process's environment is readable in /proc by its user and ends up in crash reports.
    """
    return os.environ.pop(ADMIN_PASSWORD_VARIABLE, None)


def child_environment(options: DemoOptions) -> dict[str, str]:
    """Environment of the demo's child processes: the embedded brokers, no idempotence (Tansu).

    Poller and bridge keep their outboxes in the embedded mode's var/ (EVDASH_OUTBOX_DIR), so
    records a stopped demo could not deliver are sent by the next one.
    """
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{options.kafka_port}",
        "KAFKA_ENABLE_IDEMPOTENCE": "0",
        "EVDASH_OUTBOX_DIR": str(setting("OUTBOX_DIR")),
        "PYTHONUNBUFFERED": "1",
    }
    if not options.direct:
        # The embedded broker, which trusts loopback clients: no login, no TLS (a CA file meant for
        # another broker would make the mqtt:// URL a configuration error).
        env |= {
            "EVDASH_MQTT_URL": options.mqtt_url,
            "EVDASH_MQTT_USERNAME": "",
            "EVDASH_MQTT_PASSWORD": "",
            "EVDASH_MQTT_CA_FILE": "",
        }
    return env


def poller_args(options: DemoOptions) -> list[str]:
    return ["runpoller", "--output", "kafka" if options.direct else "mqtt", *metrics_args(options, "poller")]


def bridge_args(options: DemoOptions) -> list[str]:
    return ["runbridge", *metrics_args(options, "bridge")]


def metrics_args(options: DemoOptions, worker: str) -> list[str]:
    port = options.metrics_ports().get(worker)
    return [] if port is None else ["--metrics-port", str(port)]


def start_brokers(options: DemoOptions) -> dict[str, subprocess.Popen]:
    """The embedded Kafka broker, and the MQTT broker unless direct; CommandError if one cannot start."""
    brokers: dict[str, subprocess.Popen] = {}
    try:
        brokers["kafka-broker"] = start_broker(port=options.kafka_port)
        if not options.direct:
            brokers["mqtt-broker"] = start_mqtt_broker(port=options.mqtt_port)
    except EmbeddedBrokerError as exc:
        for process in brokers.values():
            stop_broker(process)
        raise CommandError(str(exc)) from exc
    return brokers


async def open_bridge_session(options: DemoOptions) -> None:
    """Create the bridge's persistent session before the poller starts publishing.

    The MQTT broker queues messages only for a session that exists: without this, the records the
    poller publishes before the bridge's first subscription (both start in parallel, and the bridge
    first checks the Kafka topics) would be lost. A failure here costs only those first records.
    """
    client_id = setting("BRIDGE_CLIENT_ID")
    try:
        async with aiomqtt.Client("127.0.0.1", options.mqtt_port, identifier=client_id, clean_session=False) as client:
            await client.subscribe(telemetry_subscription(), qos=1)
    except (aiomqtt.MqttError, OSError) as exc:
        logger.warning("could not open the bridge's MQTT session ahead of the poller: %s", exc)


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `manage.py ARGS` in its own session, so that we decide the order of shutdown."""
    manage = Path(settings.BASE_DIR) / "manage.py"
    return subprocess.Popen(  # noqa: S603
        [sys.executable, str(manage), *args], env=env, start_new_session=True, preexec_fn=die_with_parent()
    )


@dataclass(frozen=True)
class ChildExit:
    """How one child process of the demo ended: cleanly means exit status 0 after our SIGTERM."""

    name: str
    returncode: int
    early: bool = False  # it had ended before the demo asked it to stop
    killed_after_s: float | None = None  # it ignored SIGTERM for this long and was killed

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.early and self.killed_after_s is None

    def describe(self) -> str:
        """One line for the operator: what happened to this child."""
        if self.killed_after_s is not None:
            return f"{self.name} did not stop within {self.killed_after_s:g} s of SIGTERM and was killed"
        status = describe_returncode(self.returncode)
        if self.early:
            return f"{self.name} had ended by itself before the demo stopped ({status})"
        return f"{self.name} stopped with {status}" if not self.clean else f"{self.name} stopped cleanly"


def describe_returncode(returncode: int) -> str:
    """'exit status 1' or 'signal SIGKILL' (Popen reports a signal as a negative return code)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


# The order of shutdown: each stage flushes into the next, which is still running.
STOP_ORDER = ("runpoller", "runbridge", "simulate", "mqtt-broker", "kafka-broker")
STOP_DESCRIPTIONS = {
    "runpoller": "poller (flushing to MQTT)",
    "runbridge": "bridge (flushing to Kafka)",
    "simulate": "simulator",
    "mqtt-broker": "MQTT broker",
    "kafka-broker": "Kafka broker",
}
# The brokers stop at once on SIGTERM (amqtt takes about a second); the others may flush for 10 s.
STOP_TIMEOUT_S = {"mqtt-broker": 10.0, "kafka-broker": 5.0}


def describe_stopping(children: Collection[str], *, direct: bool) -> str:
    """'Stopping: poller (flushing to MQTT), bridge (flushing to Kafka), ... ...' for these children."""
    descriptions = STOP_DESCRIPTIONS | ({"runpoller": "poller (flushing to Kafka)"} if direct else {})
    return "Stopping: " + ", ".join(descriptions[name] for name in STOP_ORDER if name in children) + " ..."


def stop_children(children: dict[str, subprocess.Popen]) -> list[ChildExit]:
    """Stop the demo's children in STOP_ORDER, each after the previous one has ended."""
    return [
        stop_child(children[name], name, timeout_s=STOP_TIMEOUT_S.get(name, 15.0))
        for name in STOP_ORDER
        if name in children
    ]


def stop_child(process: subprocess.Popen, name: str, timeout_s: float = 15.0) -> ChildExit:
    """SIGTERM, wait for the graceful shutdown, kill if it hangs; say how it ended."""
    if (returncode := process.poll()) is not None:
        return ChildExit(name, returncode, early=True)
    process.terminate()
    try:
        return ChildExit(name, process.wait(timeout_s))
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop in %g s; killing it", name, timeout_s)
        process.kill()
        return ChildExit(name, process.wait(), killed_after_s=timeout_s)


def report_child_deaths(children: dict[str, subprocess.Popen], reported: set[str]) -> None:
    """Log, once each, the children that ended while the demo runs: the dashboard alone would
    only show chargers going offline (poller) or unreachable (simulator), not why."""
    for name, process in children.items():
        if name not in reported and (returncode := process.poll()) is not None:
            reported.add(name)
            logger.error(
                "%s ended by itself (%s); the demo keeps serving, Ctrl-C stops it",
                name,
                describe_returncode(returncode),
            )


class ConsumerFailed(CommandError):
    """The demo's in-process Kafka consumer died; the demo stops and exits non-zero."""


def serve_web_with_consumer(
    host: str, port: int, children: dict[str, subprocess.Popen] | None = None, metrics_port: int | None = None
) -> None:
    """Run daphne in this process with the Kafka consumer as a task on its event loop.

    `children` (name -> process) are watched once a second; one that ends is logged at once.
    """
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from twisted.internet import defer, reactor, task

    from evdash.asgi import application
    from gateway import services
    from gateway.kafka import web_producer

    stop = asyncio.Event()
    consumer_task: list[asyncio.Task] = []
    consumer_failure: list[BaseException] = []

    def start_consumer() -> None:
        consumer = asyncio.get_event_loop().create_task(services.run_consumer(stop, metrics_port=metrics_port))
        consumer.add_done_callback(stop_if_consumer_failed)
        consumer_task.append(consumer)

    def stop_if_consumer_failed(finished: asyncio.Task) -> None:
        # Without the consumer the dashboard silently shows no data: stop the demo and say why.
        if finished.cancelled() or finished.exception() is None:
            return
        consumer_failure.append(finished.exception())
        logger.error("the live consumer failed (run_consumer logged why); stopping the demo")
        if not stop.is_set():
            reactor.stop()

    def stop_consumer() -> defer.Deferred | None:
        stop.set()
        if consumer_task:
            return defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.wait(consumer_task)))
        return None

    reactor.addSystemEventTrigger("before", "shutdown", stop_consumer)
    if children:
        watcher = task.LoopingCall(report_child_deaths, children, set())
        watcher.start(1.0, now=False)
        reactor.addSystemEventTrigger("before", "shutdown", lambda: watcher.running and watcher.stop())
    try:
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            ready_callable=start_consumer,
            verbosity=0,
        ).run()
    finally:
        # The pages' Kafka producer lives as long as the process: close it with the web server,
        # before the demo stops its broker (Tansu waits for connected clients, then is killed).
        web_producer.close()
    if consumer_failure:
        failure = consumer_failure[0]
        raise ConsumerFailed(f"the live consumer failed: {type(failure).__name__}: {failure}")
