"""Store each site status as a SiteSample row: the site page's history and the fleet's headroom.

One row per site per instant (the model's unique constraint on site_slug + at), inserted in bulk
with conflicts ignored: the consumer is at least once, so a batch delivered twice stores nothing
twice. The row keeps the whole status (for the page's table and chart) and, as columns the fleet
and the history query read without opening the JSON, the limit and the most loaded phase's draw
and allocation.
"""

import logging

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from gateway.models import SiteSample
from gateway.sitecontrol.messages import SiteStatus

logger = logging.getLogger(__name__)


def sample_of(status: SiteStatus) -> SiteSample:
    """The row of one status: the per-phase figures reduced to the most loaded phase (what the limit is about)."""
    return SiteSample(
        site_slug=status.site,
        at=status.at,
        limit_a=status.limit_a,
        draw_a=max(status.draw_a),
        allocated_a=max(status.allocated_a),
        state=status.state,
        status=status.to_dict(),
    )


def save_site_samples(statuses: list[SiteStatus]) -> int:
    """Insert the statuses' rows (a row already there is kept as it is); returns how many were given."""
    close_old_connections()
    SiteSample.objects.bulk_create([sample_of(status) for status in statuses], ignore_conflicts=True)
    return len(statuses)


async def store_site_samples(statuses: list[SiteStatus]) -> None:
    """Sink of the site-status consumer."""
    if statuses:
        await sync_to_async(save_site_samples)(statuses)
