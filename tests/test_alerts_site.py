"""The site alerts of load management, judged on scripted site statuses with an injected clock: the
meter going stale raises once and clears, an overshoot the controller corrects within its period is
no alert while one that lasts is, a refused site, two pollers' statuses interleaved, redelivery and
a restarted engine raising nothing twice."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from gateway.alerts.engine import AlertEngine
from gateway.alerts.notify import AlertNotifier
from gateway.choices import AlertKind
from gateway.models import Alert, AlertRule, Site
from gateway.sitecontrol.messages import SiteStatus
from tests.test_alerts import Clock, create_builtin_rules, pushed, settle  # noqa: F401 (the `pushed` fixture)
from tests.test_sitecontrol_messages import site_status

pytestmark = pytest.mark.django_db(transaction=True)

METER, OVER, REFUSED = AlertKind.SITE_METER_STALE, AlertKind.SITE_OVER_LIMIT, AlertKind.SITE_CONTROL_REFUSED
OVER_DRAW = (64.5, 40.0, 40.0)  # L1 1.5 A over the 63 A limit


@pytest.fixture(autouse=True)
async def close_thread_connections() -> AsyncIterator[None]:
    """The engine stores through sync_to_async's thread: close its connection before the database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def rules(db: None) -> dict[str, AlertRule]:
    return create_builtin_rules("0015_site_load_management")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def engine(clock: Clock) -> AlertEngine:
    return AlertEngine(clock=clock, notifier=AlertNotifier(publish=False))


async def feed(alert_engine: AlertEngine, clock: Clock, *statuses: SiteStatus) -> None:
    """Hand statuses to the engine one batch each, the clock at each status's time (as they arrive live)."""
    for status in statuses:
        clock.moment = status.at
        await alert_engine.on_site_status([status])


def stored(**filters: Any) -> list[Alert]:
    return list(Alert.objects.filter(**filters).order_by("raised_at"))


async def site_alerts(kind: str) -> list[Alert]:
    return await sync_to_async(stored)(kind=kind)


async def test_a_stale_meter_raises_one_alert_and_clears_when_the_meter_is_back(
    rules: dict[str, AlertRule],
    clock: Clock,
    pushed: list[dict],  # noqa: F811 (the fixture)
) -> None:
    alert_engine = engine(clock)
    fallback = {"state": "fallback", "draw_source": "fallback", "meter_age_s": 12.0, "reason": "no reading for 12 s"}
    await feed(
        alert_engine,
        clock,
        site_status(0),
        site_status(5, **fallback),
        site_status(10, **(fallback | {"meter_age_s": 17.0})),
        site_status(15, **(fallback | {"meter_age_s": 22.0})),
    )
    [alert] = await site_alerts(METER)
    assert (alert.charge_point_slug, alert.site_slug, alert.rule_id) == ("depot-meter", "depot", rules[METER].id)
    assert (alert.raised_at, alert.cleared_at, alert.value) == (site_status(5).at, None, 12.0)
    assert "The site meter of depot is stale (no good reading for 12 s)" in alert.message
    assert "no reading for 12 s" in alert.message

    await feed(alert_engine, clock, site_status(20), site_status(25))
    [alert] = await site_alerts(METER)
    assert alert.cleared_at == site_status(20).at
    await settle()
    assert [(update["event"], update["kind"], update["charge_point"]) for update in pushed] == [
        ("raised", METER, "depot-meter"),
        ("cleared", METER, "depot-meter"),
    ]
    # A second episode is a second alert.
    await feed(alert_engine, clock, site_status(30, **fallback))
    assert len(await site_alerts(METER)) == 2


async def test_an_overshoot_corrected_within_one_period_is_no_alert_one_that_lasts_is(
    rules: dict[str, AlertRule], clock: Clock
) -> None:
    alert_engine = engine(clock)
    # One period over (a load step the controller answers at once), then within: nothing.
    await feed(alert_engine, clock, site_status(0, draw_a=OVER_DRAW), site_status(5), site_status(10, draw_a=OVER_DRAW))
    assert await site_alerts(OVER) == []
    # A status on the fallback says nothing about the limit (its draw is not measured): the count goes on.
    await feed(alert_engine, clock, site_status(12, draw_a=OVER_DRAW, state="fallback", draw_source="fallback"))
    assert await site_alerts(OVER) == []
    await feed(alert_engine, clock, site_status(15, draw_a=OVER_DRAW), site_status(20, draw_a=OVER_DRAW))
    [alert] = await site_alerts(OVER)
    assert (alert.charge_point_slug, alert.site_slug, alert.raised_at) == ("depot", "depot", site_status(15).at)
    assert alert.value == 64.5
    assert "draws 64.5 A on its most loaded phase, over its 63 A limit" in alert.message
    # Exactly at the limit is within it.
    await feed(alert_engine, clock, site_status(25, draw_a=(63.0, 63.0, 63.0)))
    [alert] = await site_alerts(OVER)
    assert alert.cleared_at == site_status(25).at


async def test_a_refused_site_raises_and_clears_and_two_pollers_interleaved_change_nothing(
    rules: dict[str, AlertRule], clock: Clock
) -> None:
    """poller-b refuses the site poller-a controls: both publish every period."""
    alert_engine = engine(clock)
    refused = {"poller": "poller-b", "state": "refused", "reason": "site controlled by poller-a on host-1"}
    statuses = []
    for period in range(4):
        statuses += [
            site_status(period * 5, draw_a=OVER_DRAW if period else (40.0, 40.0, 40.0)),
            site_status(period * 5 + 1, draw_a=(0.0, 0.0, 0.0), **refused),
        ]
    await feed(alert_engine, clock, *statuses)
    [alert] = await site_alerts(REFUSED)
    assert (alert.charge_point_slug, alert.site_slug, alert.raised_at) == ("depot", "depot", site_status(1).at)
    assert alert.message == "Load management of depot refused by poller poller-b: site controlled by poller-a on host-1"
    assert alert.cleared_at is None  # poller-a's statuses meanwhile do not clear it
    # The refusing poller's statuses neither break poller-a's overshoot nor stand for its draw.
    [over] = await site_alerts(OVER)
    assert over.raised_at == site_status(10).at
    assert await site_alerts(METER) == []

    # poller-b stops: poller-a's statuses clear it once nobody refused for 30 s.
    await feed(alert_engine, clock, site_status(30), site_status(45))
    assert (await site_alerts(REFUSED))[0].cleared_at is None
    await feed(alert_engine, clock, site_status(50))
    assert (await site_alerts(REFUSED))[0].cleared_at == site_status(50).at

    # poller-b refuses again, then takes over (poller-a gone): its own next status clears at once.
    await feed(alert_engine, clock, site_status(55, **refused), site_status(60, poller="poller-b"))
    second = (await site_alerts(REFUSED))[1]
    assert (second.raised_at, second.cleared_at) == (site_status(55).at, site_status(60).at)


async def test_redelivered_statuses_and_a_restarted_engine_raise_nothing_twice(
    rules: dict[str, AlertRule], clock: Clock
) -> None:
    first = engine(clock)
    fallback = {"state": "fallback", "draw_source": "fallback"}
    batch = [site_status(0, **fallback), site_status(5, draw_a=OVER_DRAW), site_status(10, draw_a=OVER_DRAW)]
    clock.moment = batch[-1].at
    await first.on_site_status(batch)
    await first.on_site_status(batch)  # the consumer handles an uncommitted batch again
    meter = await site_alerts(METER)
    assert [(a.raised_at, a.cleared_at) for a in meter] == [(batch[0].at, batch[1].at)]
    assert len(await site_alerts(OVER)) == 1

    # A restarted engine gets the batch again (it was never committed): nothing raised again; the
    # open alert is taken up and cleared by the next status within the limit.
    restarted = engine(clock)
    await restarted.on_site_status(batch)
    assert len(await site_alerts(METER)) == 1
    assert len(await site_alerts(OVER)) == 1
    await feed(restarted, clock, site_status(15))
    [over] = await site_alerts(OVER)
    assert over.cleared_at == site_status(15).at


async def test_old_statuses_and_rules_out_of_scope_or_disabled_raise_nothing(
    rules: dict[str, AlertRule], clock: Clock, site: Site
) -> None:
    """A new consumer group reads the topic's past: an hour-old status is history, not an alert."""
    clock.at(2 * 3600)
    await engine(clock).on_site_status([site_status(0, state="refused", reason="controlled elsewhere")])
    assert await site_alerts(REFUSED) == []

    # The refused rule scoped to another site; the meter rule disabled.
    other = await Site.objects.acreate(name="Other", slug="other")
    await AlertRule.objects.filter(kind=REFUSED).aupdate(site=other)
    await AlertRule.objects.filter(kind=METER).aupdate(enabled=False)
    alert_engine = engine(clock)
    await feed(
        alert_engine,
        clock,
        site_status(7200, state="refused", reason="controlled elsewhere"),
        site_status(7205, state="fallback", draw_source="fallback"),
        site_status(7210, site="other", state="refused", reason="controlled elsewhere"),
    )
    assert [a.site_slug for a in await site_alerts(REFUSED)] == ["other"]
    assert await site_alerts(METER) == []
