"""Which poller controls a site: a SiteControlLease row taken by the first poller and renewed while it
runs; a second poller finding another's fresh lease refuses (a site shared twice would be over its
limit). Sync: the poller calls these through sync_to_async."""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, close_old_connections, transaction

logger = logging.getLogger(__name__)

# A lease is fresh for this many control periods plus LEASE_GRACE_S after its last renewal: a
# poller that renews every RELOAD_INTERVAL_S (5 s) keeps it through a slow database round.
LEASE_PERIODS = 3
LEASE_GRACE_S = 10.0


def lease_fresh_s(period_s: float) -> float:
    """How long a lease stays another poller's after its last renewal."""
    return LEASE_PERIODS * period_s + LEASE_GRACE_S


@dataclass(frozen=True)
class LeaseOutcome:
    """What taking a site's lease gave: ours, or refused because another poller holds it."""

    site: str
    taken: bool
    holder: str  # the poller id holding it (ours when taken)
    host: str
    pid: int
    renewed_at: datetime
    took_over: str = ""  # the poller whose stale lease this one replaced

    @property
    def refusal(self) -> str:
        """Why this poller does not control the site, in words an operator reads."""
        return (
            f"site {self.site} is controlled by poller {self.holder} on {self.host} (pid {self.pid}, "
            f"renewed {self.renewed_at:%H:%M:%S} UTC); this poller keeps polling its chargers but does "
            "not control them (a site split across two pollers would be shared twice)"
        )


def take_lease(
    site_id: int, site: str, poller_id: str, host: str, pid: int, period_s: float, now: datetime | None = None
) -> LeaseOutcome:
    """Take or renew the site's lease for this poller; refused while another poller's is fresh.

    The same poller id is the same poller (its outbox lock lets only one run), so a restarted
    poller takes its own lease back at once; another's lease older than lease_fresh_s is taken over.
    """
    from gateway.models import SiteControlLease

    close_old_connections()
    now = now or datetime.now(UTC)
    try:
        with transaction.atomic():
            lease = SiteControlLease.objects.select_for_update().filter(site_id=site_id).first()
            if lease is None:
                SiteControlLease.objects.create(
                    site_id=site_id, poller_id=poller_id, host=host, pid=pid, renewed_at=now
                )
                return LeaseOutcome(site, True, poller_id, host, pid, now)
            fresh = lease.renewed_at > now - timedelta(seconds=lease_fresh_s(period_s))
            if lease.poller_id != poller_id and fresh:
                return LeaseOutcome(site, False, lease.poller_id, lease.host, lease.pid, lease.renewed_at)
            took_over = lease.poller_id if lease.poller_id != poller_id else ""
            lease.poller_id, lease.host, lease.pid, lease.renewed_at = poller_id, host, pid, now
            lease.save()
            return LeaseOutcome(site, True, poller_id, host, pid, now, took_over=took_over)
    except IntegrityError:
        # Another poller created it between our read and our insert: it is theirs this round.
        lease = SiteControlLease.objects.get(site_id=site_id)
        return LeaseOutcome(
            site, lease.poller_id == poller_id, lease.poller_id, lease.host, lease.pid, lease.renewed_at
        )


def release_lease(site_id: int, poller_id: str) -> bool:
    """Give the lease up on a clean stop, so another poller may take the site at once; False if not ours."""
    from gateway.models import SiteControlLease

    close_old_connections()
    deleted, _ = SiteControlLease.objects.filter(site_id=site_id, poller_id=poller_id).delete()
    return bool(deleted)
