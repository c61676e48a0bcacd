"""Whether a poller's site controllers do their job: one rule, read by the poller's readiness
(gateway/health/workers.py) and by its row on the pipeline page (gateway/pipeline/reporter.py).

A controlled site has a problem when its control rounds keep failing (FAILED_IN_A_ROW in a row:
the controller logs each and the chargers keep their last limits, however the site's load moves)
or when no round has ended for OVERDUE_PERIODS of its control period (the controller's loop died
or the event loop is starved). Not problems here, by design:
- fallback: the site meter is stale and every charger gets its failsafe share, the safe mode the
  controller was built to fall into (a device's problem, as an offline charger is; the site page
  and its alerts say so);
- refused: another poller holds the site's lease and controls it (the refusal is logged as an
  ERROR and raised as an alert).

Like the other worker checks this only reads what the controllers keep (ints, a frozen SiteStatus),
so it may run on the metrics server's threads while the event loop changes them.
"""

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # read only: no import of the controller's machinery
    from gateway.sitecontrol.controller import SiteController

# Failed rounds in a row that make a site's control failing: one failed round is a blip the
# controller's ERROR already shows; three (the outbox's three failed attempts) is a defect that stays.
FAILED_IN_A_ROW = 3
# A site whose last round ended more than this many control periods ago (and OVERDUE_AT_LEAST_S) is
# not being controlled: a round ends every period, an urgent one in between.
OVERDUE_PERIODS = 3
OVERDUE_AT_LEAST_S = 10.0


def site_problem(controller: "SiteController", now: datetime) -> str | None:
    """Why a controlled site is not being controlled, in one line naming the site; None if it is."""
    site = controller.config.site
    failed_in_a_row = controller.counters.failed_in_a_row
    if failed_in_a_row >= FAILED_IN_A_ROW:
        return f"site {site}: its last {failed_in_a_row} control rounds failed; the chargers keep their limits"
    status = controller.last_status
    if status is None:  # no round yet: the first waits up to two periods for the chargers' records
        return None
    period_s = controller.config.period_s
    since_s = (now - status.at).total_seconds()
    if since_s > max(OVERDUE_PERIODS * period_s, OVERDUE_AT_LEAST_S):
        return f"site {site}: no control round for {since_s:.0f} s (one is due every {period_s:g} s)"
    return None
