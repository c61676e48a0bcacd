"""manage.py demo: the whole product on the embedded default, stopped by one Ctrl-C."""

import asyncio
import os

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from gateway import demo
from gateway.runtime import configure_verbosity


class Command(BaseCommand):
    help = (
        "Run the brokers, simulated charge points, poller, MQTT bridge, consumer and dashboard together "
        "(embedded mode; EVDASH_DEMO_DIRECT=1: poller straight to Kafka, no MQTT)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--charge-points",
            type=int,
            default=int(os.environ.get("EVDASH_DEMO_CHARGE_POINTS", "12")),
            help="Simulated charge points (default: $EVDASH_DEMO_CHARGE_POINTS or 12).",
        )
        parser.add_argument("--host", default="127.0.0.1", help="Web server address.")
        parser.add_argument("--port", type=int, default=8000, help="Web server port.")
        parser.add_argument("--kafka-port", type=int, default=9092, help="Embedded Kafka broker port.")
        parser.add_argument(
            "--mqtt-port",
            type=int,
            default=demo.DEFAULT_MQTT_PORT,
            help=f"Embedded MQTT broker port (default {demo.DEFAULT_MQTT_PORT}: 1883 is often a Mosquitto's).",
        )
        parser.add_argument("--modbus-base-port", type=int, default=15020, help="First simulator port.")
        parser.add_argument("--speedup", type=float, default=1.0, help="Simulated time speed-up.")
        parser.add_argument(
            "--session-scale",
            type=float,
            default=demo.DEMO_SESSION_SCALE,
            help=(
                f"Compress the simulated day (default {demo.DEMO_SESSION_SCALE}: sessions start and finish and faults "
                "come and go within minutes, at real power); 1 for real-life durations."
            ),
        )
        parser.add_argument("--seed", type=int, default=None, help="Simulator random seed.")
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve each worker's /metrics, /healthz and /readyz: the poller on this port, the bridge on +1, "
            "the consumer on +2 (README, Integrations).",
        )

    def handle(self, *args, **options) -> None:
        configure_verbosity(options["verbosity"])
        if settings.CHANNEL_LAYERS["default"]["BACKEND"] != "channels.layers.InMemoryChannelLayer":
            raise CommandError("manage.py demo is the embedded mode: unset REDIS_URL.")
        count = options["charge_points"]
        demo.check_fleet_size(count, options["modbus_base_port"])
        opts = demo.DemoOptions(
            charge_points=count,
            http_host=options["host"],
            http_port=options["port"],
            kafka_port=options["kafka_port"],
            modbus_base_port=options["modbus_base_port"],
            speedup=options["speedup"],
            session_scale=options["session_scale"],
            seed=options["seed"],
            mqtt_port=options["mqtt_port"],
            direct=demo.direct_path_requested(),
            metrics_port=options["metrics_port"],
        )
        call_command("migrate", interactive=False, verbosity=0)
        created = demo.ensure_demo_fleet(count, opts.modbus_base_port)
        # Taken out of the environment before the first child starts (the brokers, just below).
        password, _ = demo.ensure_admin(demo.take_admin_password())
        self.stdout.write(f"Demo fleet: {count} charge points ({created} new).")
        if warning := demo.edge_path_warning(opts):
            self.stderr.write(warning)

        children = demo.start_brokers(opts)  # name -> process, for watching and stopping
        settings.EVDASH["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{opts.kafka_port}"
        settings.EVDASH["KAFKA_ENABLE_IDEMPOTENCE"] = False
        env = demo.child_environment(opts)
        try:
            meter = demo.demo_meter_profile()
            simulator = demo.simulator_args(opts, demo.demo_profile_slugs(), meter.slug if meter else None)
            children["simulate"] = demo.spawn(simulator, env)
            if not opts.direct:
                asyncio.run(demo.open_bridge_session(opts))
                children["runbridge"] = demo.spawn(demo.bridge_args(opts), env)
            children["runpoller"] = demo.spawn(demo.poller_args(opts), env)
            self.stdout.write("\n".join(self.banner(opts, password, demo.describe_site(opts))))
            demo.serve_web_with_consumer(
                opts.http_host, opts.http_port, children, metrics_port=opts.metrics_ports().get("consumer")
            )
        finally:
            self.stdout.write(demo.describe_stopping(children, direct=opts.direct))
            exits = demo.stop_children(children)
        self.report_shutdown(exits)

    @staticmethod
    def banner(opts: demo.DemoOptions, password: str | None, site: str = "") -> list[str]:
        return [
            "",
            f"  evdash is running: http://{opts.http_host}:{opts.http_port}/",
            "  user: admin",
            f"  password: {password}" if password else "  password: unchanged (set EVDASH_ADMIN_PASSWORD to reset it)",
            f"  path: {opts.describe_path()}",
            f"  pipeline health: http://{opts.http_host}:{opts.http_port}/pipeline/",
            *([f"  {site}"] if site else []),
            *(f"  {worker} metrics: http://127.0.0.1:{port}/metrics" for worker, port in opts.metrics_ports().items()),
            f"  REST API docs: http://{opts.http_host}:{opts.http_port}/api/v1/docs/ (tokens: Admin → API tokens)",
            "  Ctrl-C stops everything.",
            "",
        ]

    def report_shutdown(self, exits: list[demo.ChildExit]) -> None:
        """'Stopped.' only when every child stopped cleanly; otherwise say which did not, and fail."""
        failed = [child for child in exits if not child.clean]
        for child in failed:
            self.stderr.write(child.describe())
        if failed:
            names = ", ".join(child.name for child in failed)
            raise CommandError(f"Stopped, but not cleanly: {names} (above).")
        self.stdout.write("Stopped.")
