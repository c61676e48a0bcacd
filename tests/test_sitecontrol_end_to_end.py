"""Site load management end to end: an operator's override to its expiry, a charger that ignores
writes (the chain: tests/site_chain.py)."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from gateway.choices import AlertKind
from gateway.models import Alert, AllocationOverride, ChargePoint, Command
from tests.site_chain import (
    PERIOD_S,
    chain,
    phases_of,
    settle,
    site_fleet,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(320)]


async def test_an_override_takes_its_current_until_it_expires(kafka: dict) -> None:
    """cp-9 (priority 0, L2) is paused on the stepped-up site; an override gives it 16 A for 45 s,
    the others share what is left within the limit; at the expiry it goes back to its share."""
    fleet = site_fleet(building_a=35.0)
    async with chain(fleet) as watch:
        # Room 63 − 1 − 35 = 27 A per phase: the four highest-priority three-phase chargers at 6 A.
        before = await settle(watch, "before the override", timeout_s=90, accept=lambda limits: any(limits))
        assert before[9] == 0.0, before
        controlled_from = time.monotonic()
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=45)
        await AllocationOverride.objects.acreate(
            charge_point=await ChargePoint.objects.aget(slug="cp-9"),
            charge_point_slug="cp-9",
            site_slug="car-park",
            current_a=16.0,
            username="operator",
            via="web",
            created_at=now,
            expires_at=expires_at,
        )
        # It ramps from its minimum (+4 A per period): 6, 10, 14, 16 A.
        deadline = time.monotonic() + 40
        while not watch.samples or watch.samples[-1].limits_a[9] != 16.0:
            assert time.monotonic() < deadline, "cp-9 never reached its override's 16 A"
            await asyncio.sleep(0.2)
        assert datetime.now(UTC) < expires_at
        during_from = time.monotonic()
        await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds())
        during = watch.between(during_from, time.monotonic())
        # Back to its share when it expires: paused again (the lowest priority, no room on L2).
        deadline = time.monotonic() + 3 * PERIOD_S
        while watch.samples[-1].limits_a[9] != 0.0:
            assert time.monotonic() < deadline, "cp-9 kept its override's current after the expiry"
            await asyncio.sleep(0.2)
        end = time.monotonic()
    # While the override held, L2 (room 27 A) carried cp-9's 16 A and at most 11 A of the others.
    for sample in during:
        assert sample.limits_a[9] == 16.0, sample.limits_a
        assert sum(sample.limits_a[i] for i in range(10) if 1 in phases_of(i)) <= 27.0, sample.limits_a
    assert not watch.over(controlled_from, end)


async def test_a_charger_that_ignores_writes_is_counted_at_its_draw_and_alerted(kafka: dict) -> None:
    """cp-0 acknowledges writes and ignores them (its car keeps drawing up to 32 A): its commands
    fail by read-back, a "Command failed" alert is raised, and the others share what its actual
    draw leaves, so the site stays within its limit."""
    fleet = site_fleet(ignore=0)
    async with chain(fleet, consumer=True) as watch:
        await settle(watch, "with cp-0 ignoring", timeout_s=90)
        deadline = time.monotonic() + 30
        while not await Alert.objects.filter(kind=AlertKind.COMMAND_FAILED, charge_point_slug="cp-0").aexists():
            assert time.monotonic() < deadline, "no command-failed alert for cp-0 within 30 s"
            await asyncio.sleep(0.2)
        steady_from = time.monotonic()
        await asyncio.sleep(2 * PERIOD_S)
        end = time.monotonic()
    failed = [c async for c in Command.objects.filter(charge_point_slug="cp-0", via="controller", status="failed")]
    assert failed and all(c.reason_code == "readback_mismatch" for c in failed)
    assert not watch.over(steady_from, end), "the site is over its limit: cp-0's draw was not counted"
