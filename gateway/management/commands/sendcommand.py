"""manage.py sendcommand: send one operator command to a charge point and wait for its verified result."""

import getpass
import math
from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.choices import CommandAction, CommandStatus
from gateway.commands.results import NO_ANSWER_GRACE_S, SWEEP_INTERVAL_S
from gateway.commands.service import CommandRefused, command_json, send_command, wait_for_result
from gateway.conf import setting
from gateway.models import Command as CommandRow
from gateway.runtime import configure_verbosity

ACTIONS = {action.replace("_", "-"): action for action in CommandAction.values}
# Exit statuses (also in the help): 0 only when the charger applied the command.
EXIT_FAILED = 1  # the poller reported a failure, or nobody answered before the expiry (no_answer)
EXIT_USAGE = 2  # bad arguments: unknown user, missing or malformed value
EXIT_REFUSED = 3  # the server refused it (not permitted, unsupported, out of range, Kafka unavailable)
EXIT_PENDING = 4  # no result within --wait: still pending


class Command(BaseCommand):
    help = (
        "Send a command to a charge point (through Kafka to the poller that owns it) and print its result: "
        "applied (with the value read back) or failed, and why. Needs runconsumer (or the demo) running, which "
        "stores the results. Exit status: 0 applied; "
        f"{EXIT_FAILED} failed (by the poller, or no_answer after the expiry); {EXIT_USAGE} usage error; "
        f"{EXIT_REFUSED} refused by the server (not permitted, unsupported, out of range, Kafka unavailable); "
        f"{EXIT_PENDING} no result within --wait."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The charge point's slug.")
        parser.add_argument("action", choices=list(ACTIONS), help="What to do.")
        parser.add_argument("value", nargs="?", help="set-current-limit: the limit in A (pause and resume take none).")
        parser.add_argument(
            "--wait",
            type=float,
            metavar="SECONDS",
            help="How long to wait for the result (default: the command's expiry, "
            "EVDASH_COMMAND_EXPIRY_S, plus the time runconsumer takes to give up on it).",
        )
        parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
        parser.add_argument(
            "--user",
            metavar="USERNAME",
            help="Send as this user (who needs the permission gateway.send_command); default: cli:<your login>.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        configure_verbosity(options["verbosity"])
        value = parse_value(options["value"])
        wait_s = options["wait"]
        if wait_s is None:
            wait_s = setting("COMMAND_EXPIRY_S") + NO_ANSWER_GRACE_S + SWEEP_INTERVAL_S + 1
        elif not math.isfinite(wait_s) or wait_s < 0:
            raise CommandError(f"--wait must be a number of seconds >= 0, not {wait_s}", returncode=EXIT_USAGE)
        user, username = None, f"cli:{getpass.getuser()}"
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']!r}", returncode=EXIT_USAGE)
            username = None  # the user's own name
        try:
            command = send_command(
                options["slug"], ACTIONS[options["action"]], value, user=user, username=username, via="cli"
            )
        except CommandRefused as refused:
            if refused.command is not None:
                self.show(refused.command, options["json"])
            raise CommandError(f"refused ({refused.reason_code}): {refused.reason}", returncode=EXIT_REFUSED) from None
        command = wait_for_result(command.id, wait_s)
        self.show(command, options["json"])
        if command.status == CommandStatus.PENDING:
            raise CommandError(
                f"no result within {wait_s:g} s (timeout); the command is still pending", returncode=EXIT_PENDING
            )
        if command.status != CommandStatus.APPLIED:
            raise CommandError(f"failed ({command.reason_code}): {command.reason}", returncode=EXIT_FAILED)

    def show(self, command: CommandRow, as_json: bool) -> None:
        """The result on stdout: one JSON object, or one line for a person."""
        self.stdout.write(orjson.dumps(command_json(command)).decode() if as_json else describe(command))


def parse_value(text: str | None) -> float | None:
    """The VALUE argument as a number of amperes (None when absent)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"VALUE must be a number of amperes, not {text!r}", returncode=EXIT_USAGE) from None
    if not math.isfinite(value):
        raise CommandError(f"VALUE must be a finite number of amperes, not {text!r}", returncode=EXIT_USAGE)
    return value


def describe(command: CommandRow) -> str:
    """One line: what was asked, and what came of it."""
    asked = command.action + ("" if command.value is None else f" {command.value:g} A")
    what = f"{asked} to {command.charge_point_slug} by {command.username} ({command.id})"
    if command.status == CommandStatus.APPLIED:
        read_back = "" if command.read_back is None else f", read back {command.read_back:g}"
        latency = "" if command.latency_ms is None else f" in {command.latency_ms:.0f} ms"
        return f"applied: {what}{read_back}{latency}"
    if command.status == CommandStatus.FAILED:
        return f"failed ({command.reason_code}): {what}: {command.reason}"
    return f"pending: {what}: no result yet"
