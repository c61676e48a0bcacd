"""The server's side of command results: store each on its audit row and push it to the pages.

runconsumer consumes evdash.command-results with the telemetry consumer's machinery
(gateway/kafka/consumer.py, decode=CommandResult.from_json) into store_results, and runs
sweep_unanswered beside it: a command nobody answered is failed `no_answer` shortly after its
expiry, so a page or `sendcommand` never waits on a pending command forever.

The first outcome of a command wins: a row leaves `pending` once, by a conditional update, so a
result delivered twice (the consumer is at least once; a poller re-publishes a stored result after
a restart) or a result after the sweeper gave up changes nothing.

A site controller's commands (gateway/sitecontrol: user "controller:<site>") are made in the poller
and never pass through the server: their audit row is created from the result (via "controller",
created_at from the result, else its completed_at). Its id is the command's, so a result delivered
twice finds the row and changes nothing.
"""

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import KafkaError
from asgiref.sync import sync_to_async
from django.db import DatabaseError, IntegrityError, close_old_connections, transaction

from gateway.choices import CommandStatus, FailureReason
from gateway.commands.messages import CommandResult
from gateway.commands.service import command_json
from gateway.conf import setting
from gateway.kafka.consumer import TelemetryConsumer
from gateway.kafka.topics import command_results_topic, ensure_topics
from gateway.live.push import push_command_updates
from gateway.models import ChargePoint, Command
from gateway.runtime import wait_unless_stopped

logger = logging.getLogger(__name__)

# A result may be on its way when the command expires (the poller checked the expiry just before
# its write, then settled and read back): the sweeper gives it this long before it gives up.
NO_ANSWER_GRACE_S = 5.0
SWEEP_INTERVAL_S = 2.0
NO_ANSWER_REASON = "no poller answered before the command expired"
# Who a site controller's commands are from (CommandMessage.user), and the audit row's `via`.
CONTROLLER_USER_PREFIX = "controller:"
CONTROLLER_VIA = "controller"


def results_dead_letter_topic() -> str:
    """Where results that are not results (or that cannot be stored) go: evdash.command-results.dlq."""
    return f"{command_results_topic()}.dlq"


def build_results_consumer(**options: Any) -> TelemetryConsumer:
    """The consumer of command results: the telemetry consumer's machinery with the results' decoder and sink.

    From the earliest offset when its group is new: a result must not be lost to the race with
    the group's first join, and old results only meet rows that are no longer pending.
    """
    alerts = options.pop("alerts", None)  # an AlertEngine: a failed command raises an alert
    return TelemetryConsumer(
        command_results_topic(),
        group_id=f"{setting('CONSUMER_GROUP')}-commands",
        auto_offset_reset="earliest",
        sinks=[store_results] if alerts is None else [store_results, alerts.on_command_results],
        dead_letter_to=results_dead_letter_topic(),
        decode=CommandResult.from_json,
        **options,
    )


async def consume_results(stop: asyncio.Event, consumer: TelemetryConsumer) -> None:
    """Create the results topics if the broker lets us, then store results until stop is set."""
    try:
        await ensure_topics([command_results_topic(), results_dead_letter_topic()])
    except (KafkaError, OSError) as exc:
        logger.warning("could not check the command results topics (%s); continuing", exc)
    await consumer.run(stop)


async def store_results(results: list[CommandResult]) -> list[Command]:
    """Sink of the results consumer: complete the pending rows, then push them live; returns the rows completed."""
    completed = await sync_to_async(complete_commands)(results)
    if completed:
        await push_commands(completed)
    return completed


def complete_commands(results: list[CommandResult]) -> list[Command]:
    """Store each result on its row (pending, or failed by the server without a poller's word);
    results of unknown commands or of commands a poller already completed are logged and skipped."""
    close_old_connections()
    received_at = datetime.now(UTC)
    completed = []
    for result in results:
        if result.user.startswith(CONTROLLER_USER_PREFIX) and not _known(result):
            created = _create_controller_command(result, received_at)
            if created is not None:
                completed.append(created)
            continue
        command = _pending_command(result)
        if command is None:
            continue
        fields = {
            "status": result.status,
            "reason_code": result.reason_code or "",
            "reason": result.reason or "",
            "read_back": result.read_back,
            "poller": result.poller,
            "completed_at": result.completed_at,
            "received_at": received_at,
            "latency_ms": (received_at - command.created_at).total_seconds() * 1000,
        }
        # Conditional: another consumer (or the sweeper) may have completed it since it was read.
        unchanged = Command.objects.filter(id=command.id, status=command.status, poller=command.poller)
        if unchanged.update(**fields):
            for name, value in fields.items():
                setattr(command, name, value)
            completed.append(command)
            logger.info(
                "command %s %s %s to %s: %s%s (%.0f ms)",
                command.id,
                command.action,
                command.value,
                command.charge_point_slug,
                result.status,
                f" ({result.reason_code}: {result.reason})" if result.reason_code else "",
                fields["latency_ms"],
            )
        else:
            logger.info("result of command %s ignored: the command was completed meanwhile", command.id)
    return completed


def _known(result: CommandResult) -> bool:
    """Whether the result's command has a row (a valid id that is stored)."""
    try:
        command_id = uuid.UUID(result.id)
    except ValueError:
        return False
    return Command.objects.filter(id=command_id).exists()


def _create_controller_command(result: CommandResult, received_at: datetime) -> Command | None:
    """The audit row of a site controller's command, from its result; None (logged) if it cannot be one."""
    try:
        command_id = uuid.UUID(result.id)
    except ValueError:
        logger.warning("result of controller command %r (%s) ignored: not a command id", result.id, result.charge_point)
        return None
    created_at = result.created_at or result.completed_at
    command = Command(
        id=command_id,
        charge_point=ChargePoint.objects.filter(slug=result.charge_point).first(),
        charge_point_slug=result.charge_point,
        site_slug=result.site,
        action=result.action,
        value=result.value,
        username=result.user,
        via=CONTROLLER_VIA,
        created_at=created_at,
        expires_at=result.completed_at,  # not on the wire; the controller's commands live one or two periods
        status=result.status,
        reason_code=result.reason_code or "",
        reason=result.reason or "",
        read_back=result.read_back,
        poller=result.poller,
        completed_at=result.completed_at,
        received_at=received_at,
        latency_ms=(received_at - created_at).total_seconds() * 1000,
    )
    try:
        with transaction.atomic():
            command.save(force_insert=True)
    except IntegrityError:  # another consumer stored it meanwhile: its row stands
        logger.info("result of controller command %s ignored: its row was stored meanwhile", command_id)
        return None
    logger.info(
        "command %s %s %s to %s by %s: %s%s",
        command.id,
        command.action,
        command.value,
        command.charge_point_slug,
        command.username,
        result.status,
        f" ({result.reason_code}: {result.reason})" if result.reason_code else "",
    )
    return command


def _pending_command(result: CommandResult) -> Command | None:
    """The row a result completes, or None (logged) if there is none or a poller's result completed it already."""
    try:
        command_id = uuid.UUID(result.id)
    except ValueError:
        command = None
    else:
        command = Command.objects.filter(id=command_id).first()
    if command is None:
        logger.warning(
            "result of unknown command %r (%s) from %s ignored", result.id, result.charge_point, result.poller
        )
        return None
    if command.charge_point_slug != result.charge_point:
        logger.warning(
            "result of command %s for %s ignored: the command went to %s",
            command.id,
            result.charge_point,
            command.charge_point_slug,
        )
        return None
    if command.status == CommandStatus.FAILED and not command.poller:
        # The server failed it without a poller's word (no answer before the expiry, or Kafka did
        # not confirm the send, though the command may have got through): the poller's result is
        # what happened at the charger, so the audit takes it.
        logger.warning(
            "late result %s of command %s from %s replaces the server's %s",
            result.status,
            command.id,
            result.poller,
            command.reason_code,
        )
        return command
    if command.status != CommandStatus.PENDING:
        logger.info(
            "result %s of command %s from %s ignored: it is already %s",
            result.status,
            command.id,
            result.poller,
            command.status,
        )
        return None
    return command


def fail_unanswered(now: datetime | None = None) -> list[Command]:
    """Fail `no_answer` every pending command whose expiry passed more than NO_ANSWER_GRACE_S ago."""
    close_old_connections()
    now = now or datetime.now(UTC)
    overdue = Command.objects.filter(
        status=CommandStatus.PENDING, expires_at__lt=now - timedelta(seconds=NO_ANSWER_GRACE_S)
    )
    failed = []
    for command in overdue:
        fields = {
            "status": CommandStatus.FAILED,
            "reason_code": FailureReason.NO_ANSWER,
            "reason": NO_ANSWER_REASON,
            "completed_at": now,
        }
        if Command.objects.filter(id=command.id, status=CommandStatus.PENDING).update(**fields):
            for name, value in fields.items():
                setattr(command, name, value)
            failed.append(command)
            logger.warning(
                "command %s (%s to %s) failed: %s",
                command.id,
                command.action,
                command.charge_point_slug,
                NO_ANSWER_REASON,
            )
    return failed


async def sweep_unanswered(stop: asyncio.Event, interval_s: float = SWEEP_INTERVAL_S) -> None:
    """Every interval_s until stop is set: fail the commands nobody answered, and push them."""
    while True:
        try:
            failed = await sync_to_async(fail_unanswered)()
        except DatabaseError as exc:  # the database restarting: the next round catches up
            logger.warning("could not sweep unanswered commands (%s: %s); trying again", type(exc).__name__, exc)
        else:
            if failed:
                await push_commands(failed)
        if await wait_unless_stopped(stop, interval_s):
            return


async def push_commands(commands: list[Command]) -> None:
    """Push completed commands to the pages that show their charge points."""
    await push_command_updates([command_json(command) for command in commands])
