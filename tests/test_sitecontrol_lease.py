"""One poller per site: the SiteControlLease (take, renew, refuse, take over a lapsed one, release)
and two pollers' SiteControls on one site, the second refusing with a clear error and status."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from gateway.commands.messages import CommandMessage
from gateway.models import ChargePoint, Site, SiteControlLease
from gateway.sitecontrol.control import SiteControl
from gateway.sitecontrol.lease import lease_fresh_s, release_lease, take_lease
from gateway.sitecontrol.messages import SiteStatus
from tests.conftest import shipped_profile, wait_for, within

pytestmark = [pytest.mark.timeout(60)]
PERIOD_S = 5.0


@pytest.fixture
def managed_site(db: None) -> Site:
    return Site.objects.create(slug="lease-site", name="Lease site", limit_a=32.0, control_period_s=PERIOD_S)


def test_the_first_poller_takes_the_lease_and_renews_it(managed_site: Site) -> None:
    first = take_lease(managed_site.pk, managed_site.slug, "poller-a", "host-a", 11, PERIOD_S)
    later = datetime.now(UTC) + timedelta(seconds=5)
    renewed = take_lease(managed_site.pk, managed_site.slug, "poller-a", "host-a", 11, PERIOD_S, now=later)
    assert first.taken and renewed.taken
    lease = SiteControlLease.objects.get(site=managed_site)
    assert (lease.poller_id, lease.host, lease.pid, lease.renewed_at) == ("poller-a", "host-a", 11, later)


def test_a_second_poller_is_refused_while_the_lease_is_fresh_and_takes_it_once_lapsed(managed_site: Site) -> None:
    start = datetime.now(UTC)
    take_lease(managed_site.pk, managed_site.slug, "poller-a", "host-a", 11, PERIOD_S, now=start)
    # Fresh for 3 periods + 10 s = 25 s after the last renewal (DESIGN12).
    assert lease_fresh_s(PERIOD_S) == 25.0
    refused = take_lease(
        managed_site.pk, managed_site.slug, "poller-b", "host-b", 22, PERIOD_S, now=start + timedelta(seconds=24)
    )
    assert not refused.taken
    assert (refused.holder, refused.host, refused.pid) == ("poller-a", "host-a", 11)
    assert "poller-a" in refused.refusal and "host-a" in refused.refusal
    taken = take_lease(
        managed_site.pk, managed_site.slug, "poller-b", "host-b", 22, PERIOD_S, now=start + timedelta(seconds=26)
    )
    assert taken.taken and taken.took_over == "poller-a"
    assert SiteControlLease.objects.get(site=managed_site).poller_id == "poller-b"


def test_a_restarted_poller_takes_its_own_fresh_lease_back_and_release_frees_it(managed_site: Site) -> None:
    take_lease(managed_site.pk, managed_site.slug, "poller-a", "host-a", 11, PERIOD_S)
    again = take_lease(managed_site.pk, managed_site.slug, "poller-a", "host-a", 12, PERIOD_S)  # a new pid
    assert again.taken and not again.took_over
    assert not release_lease(managed_site.pk, "poller-b")  # not its lease to give up
    assert release_lease(managed_site.pk, "poller-a")
    assert take_lease(managed_site.pk, managed_site.slug, "poller-b", "host-b", 22, PERIOD_S).taken


@pytest.mark.django_db(transaction=True)
async def test_a_site_split_across_two_pollers_is_refused_by_the_second_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(settings.EVDASH, "RELOAD_INTERVAL_S", 0.2)
    site = await Site.objects.acreate(slug="lease-site", name="Lease site", limit_a=32.0, control_period_s=1.0)
    profile = await sync_to_async(shipped_profile)("generic-ev-charger")
    await ChargePoint.objects.acreate(slug="cp-l1", name="CP", site=site, host="127.0.0.1", port=1, profile=profile)
    statuses: list[SiteStatus] = []
    commands: list[CommandMessage] = []

    def control(poller_id: str, host: str) -> SiteControl:
        return SiteControl(
            poller_id=poller_id,
            deliver=commands.append,
            publish_status=statuses.append,
            polled=lambda: {"cp-l1"},  # both pollers poll the site's charger
            host=host,
            pid=100,
        )

    first, second = control("poller-a", "host-a"), control("poller-b", "host-b")
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="gateway.sitecontrol.control"):
        first_task = asyncio.create_task(first.run(stop))
        try:
            await wait_for(lambda: "lease-site" in first.controllers, 10, "the first poller controlling")
            second_task = asyncio.create_task(second.run(stop))
            await wait_for(
                lambda: any(s.state == "refused" and s.poller == "poller-b" for s in statuses), 10, "a refusal"
            )
            await wait_for(lambda: second.reloads >= 3, 10, "a few more reloads of the second poller")
            assert "lease-site" in first.controllers and not second.controllers
        finally:
            stop.set()
            await within(asyncio.gather(first_task, second_task), 15)
    refused = next(s for s in statuses if s.state == "refused")
    assert refused.site == "lease-site" and "poller-a" in refused.reason and "host-a" in refused.reason
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # said once, not every reload
    assert "poller-a" in errors[0].getMessage() and "host-a" in errors[0].getMessage()
    assert second.counters["refused"] == 1
    # The first let the site go on its clean stop: the next poller may take it at once.
    assert not await SiteControlLease.objects.filter(site=site).aexists()
