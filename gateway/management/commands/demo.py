"""manage.py demo: the whole product on the embedded default, stopped by one Ctrl-C."""

import os

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from gateway import demo
from gateway.kafka.embedded import EmbeddedBrokerError, start_broker
from gateway.runtime import configure_verbosity


class Command(BaseCommand):
    help = "Run broker, simulated charge points, poller, consumer and dashboard together (embedded mode)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--charge-points",
            type=int,
            default=int(os.environ.get("EVDASH_DEMO_CHARGE_POINTS", "12")),
            help="Simulated charge points (default: $EVDASH_DEMO_CHARGE_POINTS or 12).",
        )
        parser.add_argument("--host", default="127.0.0.1", help="Web server address.")
        parser.add_argument("--port", type=int, default=8000, help="Web server port.")
        parser.add_argument("--kafka-port", type=int, default=9092, help="Embedded broker port.")
        parser.add_argument("--modbus-base-port", type=int, default=15020, help="First simulator port.")
        parser.add_argument("--speedup", type=float, default=1.0, help="Simulated time speed-up.")
        parser.add_argument("--seed", type=int, default=None, help="Simulator random seed.")

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
            seed=options["seed"],
        )
        call_command("migrate", interactive=False, verbosity=0)
        created = demo.ensure_demo_fleet(count, opts.modbus_base_port)
        # Taken out of the environment before the first child starts (the broker, just below).
        password, _ = demo.ensure_admin(demo.take_admin_password())
        self.stdout.write(f"Demo fleet: {count} charge points ({created} new).")

        try:
            broker = start_broker(port=opts.kafka_port)
        except EmbeddedBrokerError as exc:
            raise CommandError(str(exc)) from exc
        settings.EVDASH["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{opts.kafka_port}"
        settings.EVDASH["KAFKA_ENABLE_IDEMPOTENCE"] = False
        env = demo.child_environment(opts)
        simulator = demo.spawn(demo.simulator_args(opts, [profile.slug for profile in demo.demo_profiles()]), env)
        poller = demo.spawn(["runpoller"], env)
        url = f"http://{opts.http_host}:{opts.http_port}/"
        banner = [
            "",
            f"  evdash is running: {url}",
            "  user: admin",
            f"  password: {password}" if password else "  password: unchanged (set EVDASH_ADMIN_PASSWORD to reset it)",
            "  Ctrl-C stops everything.",
            "",
        ]
        self.stdout.write("\n".join(banner))
        try:
            children = {"runpoller": poller, "simulate": simulator, "broker": broker}
            demo.serve_web_with_consumer(opts.http_host, opts.http_port, children)
        finally:
            self.stdout.write("Stopping: poller (flushing), simulator, broker ...")
            exits = [
                demo.stop_child(poller, "runpoller"),
                demo.stop_child(simulator, "simulate"),
                # Last: the poller flushes to it. Tansu exits 0 on SIGTERM at once.
                demo.stop_child(broker, "broker", timeout_s=5.0),
            ]
        self.report_shutdown(exits)

    def report_shutdown(self, exits: list[demo.ChildExit]) -> None:
        """'Stopped.' only when every child stopped cleanly; otherwise say which did not, and fail."""
        failed = [child for child in exits if not child.clean]
        for child in failed:
            self.stderr.write(child.describe())
        if failed:
            names = ", ".join(child.name for child in failed)
            raise CommandError(f"Stopped, but not cleanly: {names} (above).")
        self.stdout.write("Stopped.")
