"""MQTT topic names of the edge path: evdash/<site>/<charge point>/telemetry|state, evdash/pollers/<id>/state."""

from gateway.conf import setting

# Characters MQTT gives a meaning in topic names: a level separator and the two wildcards.
RESERVED = frozenset("/+#")


def _prefix() -> str:
    return setting("MQTT_TOPIC_PREFIX")


def _segment(value: str, what: str) -> str:
    """One topic level; a slug never holds these, but a poller id from a setting might."""
    if not value or RESERVED.intersection(value) or "\0" in value:
        raise ValueError(f"{what} {value!r} cannot be an MQTT topic level (empty, or holds '/', '+', '#' or NUL)")
    return value


def telemetry_topic(site: str, charge_point: str) -> str:
    """Where a charge point's records go: the same JSON as on Kafka, QoS 1, not retained."""
    return f"{_prefix()}/{_segment(site, 'site')}/{_segment(charge_point, 'charge point')}/telemetry"


def charge_point_state_topic(site: str, charge_point: str) -> str:
    """Retained online/offline of one charge point, published on change."""
    return f"{_prefix()}/{_segment(site, 'site')}/{_segment(charge_point, 'charge point')}/state"


def commands_topic(site: str, charge_point: str) -> str:
    """Commands for one charge point, from the bridge to the poller that owns it (QoS 1)."""
    return f"{_prefix()}/{_segment(site, 'site')}/{_segment(charge_point, 'charge point')}/commands"


def command_results_topic(site: str, charge_point: str) -> str:
    """Results of one charge point's commands, from its poller to the bridge (QoS 1)."""
    return f"{_prefix()}/{_segment(site, 'site')}/{_segment(charge_point, 'charge point')}/command-results"


def site_status_topic(site: str) -> str:
    """A site controller's status every period, from its poller to the bridge (QoS 1)."""
    return f"{_prefix()}/{_segment(site, 'site')}/site-status"


def site_status_subscription() -> str:
    """Every site's controller status (the bridge subscribes to this)."""
    return f"{_prefix()}/+/site-status"


def parse_site_status_topic(topic: str) -> str:
    """The site of a topic <prefix>/<site>/site-status; ValueError for anything else."""
    prefix = f"{_prefix()}/"
    levels = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    malformed = len(levels) != 2 or levels[1] != "site-status"
    if malformed or levels[0] in ("", "pollers") or RESERVED.intersection(levels[0]):
        raise ValueError(f"not a site status topic ({prefix}<site>/site-status): {topic!r}")
    return levels[0]


def commands_subscription(site: str | None = None) -> str:
    """What a poller subscribes to: its site's commands, or every site's."""
    return f"{_prefix()}/{_segment(site, 'site') if site else '+'}/+/commands"


def command_results_subscription() -> str:
    """Every charge point's command results (the bridge subscribes to this)."""
    return f"{_prefix()}/+/+/command-results"


def parse_charge_point_topic(topic: str, kind: str) -> tuple[str, str]:
    """(site, charge point) of a topic <prefix>/<site>/<charge point>/<kind>; ValueError for anything else."""
    prefix = f"{_prefix()}/"
    levels = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if (
        len(levels) != 3
        or levels[2] != kind
        or levels[0] == "pollers"
        or any(not level or RESERVED.intersection(level) or "\0" in level for level in levels[:2])
    ):
        raise ValueError(f"not a {kind} topic ({prefix}<site>/<charge point>/{kind}): {topic!r}")
    return levels[0], levels[1]


def poller_state_topic(poller_id: str) -> str:
    """Retained online/offline of one poller; its last will sets it offline."""
    return f"{_prefix()}/pollers/{_segment(poller_id, 'poller id')}/state"


def telemetry_subscription() -> str:
    """Every charge point's telemetry (the bridge subscribes to this)."""
    return f"{_prefix()}/+/+/telemetry"


def parse_telemetry_topic(topic: str) -> tuple[str, str]:
    """(site, charge point) of a telemetry topic; ValueError for anything else."""
    prefix = f"{_prefix()}/"  # the prefix may itself have levels (acme/evdash)
    levels = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if (
        len(levels) != 3
        or levels[2] != "telemetry"
        or levels[0] == "pollers"
        or any(not level or RESERVED.intersection(level) or "\0" in level for level in levels[:2])
    ):
        raise ValueError(f"not a telemetry topic ({prefix}<site>/<charge point>/telemetry): {topic!r}")
    return levels[0], levels[1]
