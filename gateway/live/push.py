"""The one place that sends to channel-layer groups: live telemetry and command updates to the
browsers, and logouts.

One consumer batch makes one event per group, not one per record:
- the fleet group gets the newest record of each charge point in the batch (the fleet page shows
  only the latest state);
- each site present in the batch gets all of that site's records, in batch order: a charge point
  page draws every record of its charge point, and a fleet page filtered to the site keeps the
  newest (gateway/live/consumers.py filters on the web server's side).
So a batch costs 1 + (sites in the batch) group_send calls, whatever the number of charge points.

Each telemetry event carries its sender's id and a number that counts up per group: the channel
layer drops events without telling anyone (Redis: older than its expiry, over a channel's capacity,
or the group itself lost with a restart or a flush), and a socket that sees a number skipped knows
it missed records (gateway/live/consumers.py).

Command updates (a command sent, a result stored, a command swept as unanswered) go to the site
group of each command's charge point, one event per site: the charge point page of that charge
point shows them (gateway/live/consumers.py filters). They carry no number: a dropped update is
caught by the page's own fallback (it asks GET /commands/<id>/ when no update arrives in time).

Alert updates (an alert raised, cleared or acknowledged: gateway.alerts.messages.alert_json dicts)
go to the fleet group (the fleet page's alert feed) and to the site group of each alert's site
(a fleet page filtered to the site, the charge point page of the alert's charge point): one event
per group, holding that group's alerts. They carry no number either: an alert feed that reconnects
reloads the open alerts with its snapshot, and the /alerts/ page reads the database.

Site statuses (a site controller's period: gateway.sitecontrol.messages.SiteStatus) go to the site's
control group (gateway.live.groups.site_control_group), one event per status, in order: the site
page draws each period. No number either: a page that reconnects reloads its snapshot from the
SiteSample rows, which hold every status.
"""

import asyncio
import itertools
import logging
import uuid
from collections import defaultdict

from channels.layers import get_channel_layer

from gateway.live.groups import FLEET_GROUP, session_group, site_control_group, site_group
from gateway.models import Command
from gateway.sitecontrol.messages import SiteStatus
from gateway.telemetry import Record, newest_per_charge_point

logger = logging.getLogger(__name__)

# Event shapes (checked in tests/test_live.py):
#   {"type": "telemetry.batch", "records": [Record, ...], "sender": str, "n": int}
#   {"type": "command.update", "commands": [command_json(command), ...]}
#       (gateway.commands.service.command_json: id, charge_point, action, value, status,
#       reason_code, reason, read_back, username, created_at, expires_at, completed_at, latency_ms)
#   {"type": "alert.update", "alerts": [alert_json(alert), ...]}
#       (gateway.alerts.messages.alert_json: type "alert", schema_version, event
#       raised|cleared|acknowledged, id, rule, kind, severity, charge_point, site, message, value,
#       raised_at, cleared_at, acknowledged_at, acknowledged_by)
#   {"type": "site.status", "status": SiteStatus.to_dict()}
#       (gateway.sitecontrol.messages: type "site_status", site, at, state, limit_a, draw_a, ...)
#   {"type": "session.logout"}
TELEMETRY_EVENT = "telemetry.batch"
COMMAND_EVENT = "command.update"
ALERT_EVENT = "alert.update"
SITE_STATUS_EVENT = "site.status"
LOGOUT_EVENT = "session.logout"
# This process, as a sender: a restarted consumer is a new sender, whose numbers start again.
SENDER = uuid.uuid4().hex[:16]
_numbers: defaultdict[str, itertools.count] = defaultdict(lambda: itertools.count(1))


def telemetry_events(records: list[Record]) -> dict[str, dict]:
    """The event for each group that a batch of records concerns (group name -> event)."""
    by_site: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_site[record["site"]].append(record)
    events = {FLEET_GROUP: {"type": TELEMETRY_EVENT, "records": newest_per_charge_point(records)}}
    for site, site_records in by_site.items():
        events[site_group(site)] = {"type": TELEMETRY_EVENT, "records": site_records}
    return events


async def push_telemetry(records: list[Record]) -> None:
    """Fan a batch out: one event to the fleet group, one to each site's group."""
    layer = get_channel_layer()
    if layer is None or not records:
        return
    events = telemetry_events(records)
    for group, event in events.items():
        event["sender"], event["n"] = SENDER, next(_numbers[group])
    # Concurrently: with Redis each group_send is a few round trips, and the groups are independent.
    await asyncio.gather(*(layer.group_send(group, event) for group, event in events.items()))


async def push_command_updates(commands: list[dict]) -> None:
    """Send command updates (command_json dicts) to the site group of each command's charge point."""
    layer = get_channel_layer()
    if layer is None or not commands:
        return
    sites = await command_sites(commands)
    by_site: dict[str, list[dict]] = defaultdict(list)
    for command in commands:
        site = sites.get(str(command["id"]))
        if site is None:
            logger.warning(
                "command %s: no site known for %s, its update is not pushed", command["id"], command["charge_point"]
            )
            continue
        by_site[site].append(command)
    await asyncio.gather(
        *(
            layer.group_send(site_group(site), {"type": COMMAND_EVENT, "commands": batch})
            for site, batch in by_site.items()
        )
    )


def alert_events(alerts: list[dict]) -> dict[str, dict]:
    """The event for each group that some alerts concern: all of them to the fleet, each site its own."""
    by_site: dict[str, list[dict]] = defaultdict(list)
    for alert in alerts:
        if alert.get("site"):
            by_site[alert["site"]].append(alert)
    events = {FLEET_GROUP: {"type": ALERT_EVENT, "alerts": list(alerts)}}
    for site, site_alerts in by_site.items():
        events[site_group(site)] = {"type": ALERT_EVENT, "alerts": site_alerts}
    return events


async def push_alerts(alerts: list[dict]) -> None:
    """Send alert updates (alert_json dicts) to the fleet group and to the site group of each alert."""
    layer = get_channel_layer()
    if layer is None or not alerts:
        return
    events = alert_events(alerts)
    await asyncio.gather(*(layer.group_send(group, event) for group, event in events.items()))


async def push_site_status(statuses: list[SiteStatus]) -> None:
    """Send each site status to its site's control group, in order (one site's statuses one after another)."""
    layer = get_channel_layer()
    if layer is None or not statuses:
        return
    by_site: dict[str, list[SiteStatus]] = defaultdict(list)
    for status in statuses:
        by_site[status.site].append(status)

    async def send(site: str, site_statuses: list[SiteStatus]) -> None:
        for status in site_statuses:
            await layer.group_send(site_control_group(site), {"type": SITE_STATUS_EVENT, "status": status.to_dict()})

    await asyncio.gather(*(send(site, site_statuses) for site, site_statuses in by_site.items()))


async def command_sites(commands: list[dict]) -> dict[str, str]:
    """Command id -> site slug: the command's own "site" if it carries one, else its audit row's."""
    sites = {str(command["id"]): command["site"] for command in commands if command.get("site")}
    missing = [str(command["id"]) for command in commands if str(command["id"]) not in sites]
    if missing:
        # The audit row keeps the site the command was sent to, even if the charge point has gone since.
        async for command_id, site in Command.objects.filter(id__in=missing).values_list("id", "site_slug"):
            if site:
                sites[str(command_id)] = site
    return sites


async def close_session_sockets(session_key: str) -> None:
    """Tell every socket opened with this login session to close: the session has ended."""
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(session_group(session_key), {"type": LOGOUT_EVENT})
