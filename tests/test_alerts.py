"""The alert engine on scripted records with an injected clock: one alert per episode (fault,
offline, stale, temperature with hysteresis, a failed command), a restart that raises nothing
twice, and what is pushed to the pages (alert_json's pinned shape)."""

import asyncio
import importlib
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError, connections

from gateway.alerts.engine import AlertEngine
from gateway.alerts.messages import alert_json
from gateway.alerts.notify import AlertNotifier
from gateway.choices import AlertKind, CommandStatus, FailureReason
from gateway.commands.messages import CommandResult
from gateway.commands.results import fail_unanswered
from gateway.commands.service import command_message
from gateway.live.groups import FLEET_GROUP
from gateway.models import Alert, AlertRule, ChargePoint, Command, DeviceProfile, Site
from gateway.readings import stale_after_ms
from gateway.storage import save_latest
from gateway.telemetry import Record, build_record, format_ts
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)
PINNED_KEYS = {
    "type",
    "schema_version",
    "event",
    "id",
    "rule",
    "kind",
    "severity",
    "charge_point",
    "site",
    "message",
    "value",
    "raised_at",
    "cleared_at",
    "acknowledged_at",
    "acknowledged_by",
}


class Clock:
    """The engine's injected clock: the test moves it."""

    def __init__(self, moment: datetime = T0) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def at(self, seconds: float) -> None:
        self.moment = T0 + timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The engine stores through sync_to_async's thread: close its connection before the database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


def create_builtin_rules(migration_name: str = "0010_builtin_alert_rules") -> dict[str, AlertRule]:
    """The built-in rules as a migration creates them (0010: the charge points'; 0015: the sites'),
    by kind: a transactional test before flushed its rows."""
    migration = importlib.import_module(f"gateway.migrations.{migration_name}")
    rules = {}
    for name, kind, severity, extra in migration.BUILT_IN:
        rules[kind], _ = AlertRule.objects.update_or_create(
            name=name, defaults={"kind": kind, "severity": severity, **extra}
        )
    return rules


@pytest.fixture
def rules(db: None) -> dict[str, AlertRule]:
    return create_builtin_rules()


@pytest.fixture
def fleet(site: Site, generic_profile: DeviceProfile) -> list[ChargePoint]:
    """Two charge points polled every 250 ms (stale after 10 s) and one every 5 s (stale after 15 s)."""
    return [
        make_charge_point(site, generic_profile, "cp-1", 15001),
        make_charge_point(site, generic_profile, "cp-2", 15002),
        make_charge_point(site, generic_profile, "cp-slow", 15003, poll_interval_ms=5000),
    ]


def record(
    cp: str, seconds: float, status: str = "available", seq: int | None = None, base: datetime = T0, **values: Any
) -> Record:
    """A record of `cp` taken `seconds` after `base` (seq counts tenths of seconds, so it grows with time)."""
    made = build_record(
        charge_point=cp,
        site="test-site",
        profile="generic-ev-charger",
        seq=int(seconds * 10) if seq is None else seq,
        fields=None,
        moment=base + timedelta(seconds=seconds),
    )
    made["status"] = status
    made["values"].update(values)
    return made


def engine(clock: Clock) -> AlertEngine:
    return AlertEngine(clock=clock, notifier=AlertNotifier(publish=False))


def alerts(**filters: Any) -> list[Alert]:
    return list(Alert.objects.filter(**filters).order_by("raised_at"))


@pytest.fixture
async def pushed() -> AsyncIterator[list[dict]]:
    """The alert updates pushed to the fleet group, as the fleet page's feed gets them."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(FLEET_GROUP, channel)
    received: list[dict] = []

    async def receive() -> None:
        while True:
            event = await layer.receive(channel)
            if event["type"] == "alert.update":
                received.extend(event["alerts"])

    task = asyncio.create_task(receive())
    yield received
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await layer.group_discard(FLEET_GROUP, channel)


async def settle() -> None:
    """Let the in-memory channel layer hand what was sent to the receiving task."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_fault_raises_one_alert_and_clears_it_and_redelivery_changes_nothing(
    fleet: list[ChargePoint], rules: dict[str, AlertRule], pushed: list[dict]
) -> None:
    clock = Clock()
    alerting = engine(clock)
    first = [record("cp-1", 0), *(record("cp-1", s, "faulted", error_code=12) for s in (1, 2, 3))]
    second = [record("cp-1", 4, "faulted", error_code=12), record("cp-1", 5, "charging"), record("cp-2", 5)]
    await alerting(first)
    await alerting(second)

    (alert,) = await sync_to_async(alerts)(kind=AlertKind.FAULTED)
    assert (alert.raised_at, alert.cleared_at) == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=5))
    assert (alert.charge_point_slug, alert.site_slug, alert.value) == ("cp-1", "test-site", 12)
    assert alert.charge_point_id == fleet[0].id and alert.rule_id == rules["faulted"].id
    assert alert.severity == "critical" and "error code 12" in alert.message
    await settle()
    assert [(m["event"], m["id"]) for m in pushed] == [("raised", str(alert.id)), ("cleared", str(alert.id))]
    assert all(set(m) == PINNED_KEYS for m in pushed)
    assert pushed[1] == alert_json(alert) | {"event": "cleared"}
    assert pushed[0]["raised_at"] == format_ts(T0 + timedelta(seconds=1)) and pushed[0]["cleared_at"] is None

    # The consumer crashed before committing: both batches come again. Nothing is raised twice.
    await alerting(first)
    await alerting(second)
    assert await Alert.objects.acount() == 1
    await settle()
    assert len(pushed) == 2


async def test_flapping_around_the_threshold_with_hysteresis_gives_one_alert(
    fleet: list[ChargePoint], rules: dict[str, AlertRule]
) -> None:
    # The temperature built-in: >= 70 °C for 10 s, cleared below 70 - 5 °C. Beside it, the same
    # condition with no hysteresis and no hold, which raises at every crossing.
    await AlertRule.objects.acreate(
        name="Hot, no hysteresis", kind=AlertKind.THRESHOLD, value="temperature_c", comparator=">=", threshold=70.0
    )
    series = [60, 71, 75, 66, 60, 61, *([71, 72, 74] * 4), 69, 71, 67, 72, 66, 70.5, 68, 65.5, 71, 64.9, 60]
    temperatures = list(enumerate(series))  # one record a second
    batches = [temperatures[i : i + 4] for i in range(0, len(temperatures), 4)]
    alerting = engine(Clock())
    for batch in batches:
        await alerting([record("cp-1", s, "charging", temperature_c=t) for s, t in batch])

    (hot,) = await sync_to_async(alerts)(rule_name=rules["temperature"].name)
    # The first excursion (71, 75) lasted 1 s: under the hold. The second began at 6 s and held.
    started = 6
    assert hot.raised_at == T0 + timedelta(seconds=started + 10)
    assert hot.value == series[started + 10]
    cleared_at = next(s for s, t in temperatures if s > started + 10 and t < 65)
    assert hot.cleared_at == T0 + timedelta(seconds=cleared_at)
    # Without hysteresis: one alert per upward crossing of 70.
    crossings = sum(1 for (_, a), (_, b) in itertools.pairwise(temperatures) if a < 70 <= b)
    assert crossings > 3
    assert await Alert.objects.filter(rule_name="Hot, no hysteresis").acount() == crossings


async def test_offline_fires_after_its_hold_by_the_clock_and_clears_with_the_next_record(
    fleet: list[ChargePoint], rules: dict[str, AlertRule]
) -> None:
    hold_s = rules["offline"].hold_s
    clock = Clock()
    alerting = engine(clock)
    # A poller retrying an unreachable charger sends an offline record now and then.
    await alerting([record("cp-1", 0, "offline"), record("cp-1", 20, "offline")])
    clock.at(hold_s - 0.001)
    await alerting.tick()
    assert not await Alert.objects.filter(kind=AlertKind.OFFLINE).aexists()
    clock.at(hold_s)
    await alerting.tick()
    clock.at(hold_s + 5)
    await alerting([record("cp-1", hold_s + 1, "offline")])
    await alerting.tick()
    (offline,) = await sync_to_async(alerts)(kind=AlertKind.OFFLINE)
    assert offline.raised_at == T0 + timedelta(seconds=hold_s) and offline.cleared_at is None
    await alerting([record("cp-1", hold_s + 10, "available")])
    await offline.arefresh_from_db()
    assert offline.cleared_at == T0 + timedelta(seconds=hold_s + 10)

    # Offline records carry no values: no threshold rule judges them, no fault clears or raises.
    assert await Alert.objects.acount() == 1


async def test_stale_fires_on_time_from_the_stored_latest_record_and_clears_when_fresh(
    fleet: list[ChargePoint], rules: dict[str, AlertRule]
) -> None:
    cp1, cp2, slow = fleet
    cp2.enabled = False  # not polled: never stale
    await cp2.asave()
    clock = Clock()
    alerting = engine(clock)
    await sync_to_async(save_latest)([record("cp-1", 0), record("cp-2", 0), record("cp-slow", 0)])
    fast_after_s = stale_after_ms(cp1.poll_interval_ms) / 1000
    slow_after_s = stale_after_ms(slow.poll_interval_ms) / 1000
    assert fast_after_s < slow_after_s

    clock.at(fast_after_s)  # exactly at the limit: not yet
    await alerting.tick()
    assert not await Alert.objects.aexists()
    clock.at(fast_after_s + 0.001)
    await alerting.tick()
    clock.at(fast_after_s + 1)
    await alerting.tick()  # still stale: nothing more
    (stale,) = await sync_to_async(alerts)(kind=AlertKind.STALE)
    assert (stale.charge_point_slug, stale.raised_at) == ("cp-1", T0 + timedelta(seconds=fast_after_s + 0.001))

    clock.at(slow_after_s + 0.001)
    await alerting.tick()
    assert [a.charge_point_slug for a in await sync_to_async(alerts)(kind=AlertKind.STALE)] == ["cp-1", "cp-slow"]

    # The poller is back: a fresh record is stored (by the live group, before the engine).
    await sync_to_async(save_latest)([record("cp-1", slow_after_s + 1)])
    clock.at(slow_after_s + 1.5)
    await alerting.tick()
    await stale.arefresh_from_db()
    assert stale.cleared_at == T0 + timedelta(seconds=slow_after_s + 1.5)
    assert await Alert.objects.filter(cleared_at__isnull=True).acount() == 1  # cp-slow's


async def test_a_restart_takes_up_open_alerts_and_raises_nothing_again(
    fleet: list[ChargePoint], rules: dict[str, AlertRule], pushed: list[dict]
) -> None:
    clock = Clock(T0 + timedelta(seconds=30))
    faulted = [record("cp-1", s, "faulted") for s in (1, 2)]
    episode = [record("cp-2", 1, "faulted"), record("cp-2", 2, "available")]
    await engine(clock)(faulted + episode)
    assert await Alert.objects.acount() == 2
    await sync_to_async(save_latest)([record("cp-1", 25)])
    stale_clock = Clock(T0 + timedelta(seconds=60))
    await engine(stale_clock).tick()  # cp-1 stale
    await settle()
    before = len(pushed)
    assert before == 4  # cp-1 fault raised, cp-2 raised and cleared, cp-1 stale raised

    # The consumer restarts: its last batch comes again, then the fault goes on.
    restarted = engine(stale_clock)
    await restarted(faulted + episode + [record("cp-1", 3, "faulted")])
    await restarted.tick()
    await settle()
    assert len(pushed) == before
    assert await Alert.objects.acount() == 3
    # ... and the open alert it took up clears like its own.
    await restarted([record("cp-1", 4, "available")])
    (fault,) = await sync_to_async(alerts)(kind=AlertKind.FAULTED, charge_point_slug="cp-1")
    assert fault.cleared_at == T0 + timedelta(seconds=4)


def failed_command(site: Site, *, pending_expired: bool = False) -> Command:
    created_at = datetime.now(UTC) - timedelta(seconds=60)
    return Command.objects.create(
        charge_point_slug="cp-1",
        site_slug=site.slug,
        action="set_current_limit",
        value=10.0,
        username="operator",
        via="web",
        created_at=created_at,
        expires_at=created_at + timedelta(seconds=20 if pending_expired else 120),
    )


async def test_a_failed_command_raises_one_alert_from_its_result_or_from_the_sweeper(
    fleet: list[ChargePoint], rules: dict[str, AlertRule], site: Site
) -> None:
    clock = Clock(datetime.now(UTC))
    alerting = engine(clock)
    command = await sync_to_async(failed_command)(site)
    message = command_message(command)
    failed = CommandResult.failed(message, FailureReason.READBACK_MISMATCH, "expected 10 A, read 16 A", poller="p1")
    applied = CommandResult.applied(command_message(await sync_to_async(failed_command)(site)), 10.0, poller="p1")
    await alerting.on_command_results([failed, applied])
    await alerting.on_command_results([failed])  # delivered twice
    await alerting.tick()  # the clock's look at failed commands: this one's row is still pending
    (alert,) = await sync_to_async(alerts)(kind=AlertKind.COMMAND_FAILED)
    assert (alert.subject, alert.charge_point_slug, alert.site_slug) == (str(command.id), "cp-1", "test-site")
    assert alert.raised_at == alert.cleared_at == failed.completed_at
    assert "expected 10 A, read 16 A" in alert.message and "limit" in alert.message.lower()

    # No poller answered another one: the sweeper fails it, the clock raises its alert once.
    unanswered = await sync_to_async(failed_command)(site, pending_expired=True)
    (swept,) = await sync_to_async(fail_unanswered)()
    assert swept.id == unanswered.id and swept.status == CommandStatus.FAILED
    await alerting.tick()
    await alerting.tick()
    restarted = engine(clock)
    await restarted.tick()
    (sweeper_alert,) = await sync_to_async(alerts)(kind=AlertKind.COMMAND_FAILED, subject=str(unanswered.id))
    assert "no poller answered" in sweeper_alert.message
    assert await Alert.objects.acount() == 2


async def test_rules_apply_to_their_scope_and_disabled_rules_neither_raise_nor_stay_open(
    fleet: list[ChargePoint], rules: dict[str, AlertRule]
) -> None:
    cp1 = fleet[0]
    only_cp2 = await AlertRule.objects.acreate(
        name="cp-2 power", value="power_w", comparator=">", threshold=7000.0, charge_point=fleet[1]
    )
    other_site = await Site.objects.acreate(slug="elsewhere", name="Elsewhere")
    await AlertRule.objects.acreate(
        name="elsewhere power", value="power_w", comparator=">", threshold=7000.0, site=other_site
    )
    site_rule = await AlertRule.objects.acreate(
        name="site power", value="power_w", comparator=">", threshold=7000.0, site_id=cp1.site_id
    )
    alerting = engine(Clock())
    await alerting([record("cp-1", 1, "charging", power_w=11000.0), record("cp-2", 1, "charging", power_w=7400.0)])
    raised = {(a.rule_name, a.charge_point_slug) for a in await sync_to_async(alerts)()}
    assert raised == {(only_cp2.name, "cp-2"), (site_rule.name, "cp-1"), (site_rule.name, "cp-2")}

    # The admin disables a rule: its open alerts clear at the next reload.
    site_rule.enabled = False
    await site_rule.asave()
    alerting._loaded_at = 0.0  # the reload is due (RULES_RELOAD_S)
    await alerting.tick()
    assert not await Alert.objects.filter(rule_name=site_rule.name, cleared_at__isnull=True).aexists()
    await alerting([record("cp-1", 2, "charging", power_w=11000.0)])
    assert await Alert.objects.filter(rule_name=site_rule.name).acount() == 2


async def test_a_store_that_fails_is_retried_with_the_next_batch(
    fleet: list[ChargePoint], rules: dict[str, AlertRule], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.alerts import store

    alerting = engine(Clock())
    await alerting([record("cp-1", 0)])
    real = store.save_events

    def broken(*args: Any) -> Any:
        raise DatabaseError("database restarting")

    monkeypatch.setattr(store, "save_events", broken)
    with pytest.raises(DatabaseError):
        await alerting([record("cp-1", 1, "faulted")])
    monkeypatch.setattr(store, "save_events", real)
    # The consumer retries the batch: its record is applied already, the raise it decided is stored now.
    await alerting([record("cp-1", 1, "faulted")])
    (alert,) = await sync_to_async(alerts)()
    assert alert.raised_at == T0 + timedelta(seconds=1) and alert.cleared_at is None
    assert uuid.UUID(str(alert.id))


async def test_records_that_change_nothing_touch_no_database(
    fleet: list[ChargePoint], rules: dict[str, AlertRule], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.alerts import store

    alerting = engine(Clock())
    await alerting([record("cp-1", 0)])  # loads the rules
    calls = []
    monkeypatch.setattr(store, "save_events", lambda *args: calls.append(args))
    await alerting([record(f"cp-{n % 2 + 1}", 1 + n / 100, "charging", power_w=7000.0) for n in range(200)])
    assert calls == []


async def test_two_engines_raising_the_same_alert_store_one_and_both_follow_it(
    fleet: list[ChargePoint], rules: dict[str, AlertRule], pushed: list[dict]
) -> None:
    # E.g. a partition moved to another consumer, whose engine loaded the open alerts before the raise.
    first, second = engine(Clock()), engine(Clock())
    await second([record("cp-2", 0)])  # loaded: no open alert yet
    await first([record("cp-1", 1, "faulted")])
    await second([record("cp-1", 1, "faulted"), record("cp-1", 2, "faulted")])  # adopts the stored one
    await second([record("cp-1", 3, "available")])
    (alert,) = await sync_to_async(alerts)()
    assert (alert.raised_at, alert.cleared_at) == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=3))
    await settle()
    assert [(m["event"], m["id"]) for m in pushed] == [("raised", str(alert.id)), ("cleared", str(alert.id))]
